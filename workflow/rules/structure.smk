rule structure:
    input:
        cif=crystal_cif,
    output:
        cif=out("relaxed_cif"),
        supercell=out("supercell"),
        info=out("structure_info"),
    log:
        "logs/structure/{crystal}.log",
    benchmark:
        "results/benchmarks/structure/{crystal}.tsv"
    params:
        json=lambda wc: as_json(mdconf.structure_params(config, wc.crystal)),
    threads: config["md"]["threads"]
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd structure {input.cif:q} --name {wildcards.crystal:q} --cif-out {output.cif:q}"
        " --supercell-out {output.supercell:q} --info-out {output.info:q} --params {params.json:q}"
        " > {log:q} 2>&1"
