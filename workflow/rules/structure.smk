rule structure:
    input:
        cif=crystal_cif,
        params=params_file("structure"),
    output:
        cif=out("relaxed_cif"),
        supercell=out("supercell"),
        info=out("structure_info"),
    log:
        "logs/structure/{crystal}.log",
    benchmark:
        "results/benchmarks/structure/{crystal}.tsv"
    threads: config["md"]["threads"]
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd structure {input.cif:q} --name {wildcards.crystal:q} --cif-out {output.cif:q}"
        " --supercell-out {output.supercell:q} --info-out {output.info:q} --params {input.params:q}"
        " > {log:q} 2>&1"
