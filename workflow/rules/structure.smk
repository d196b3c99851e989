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
    # file: the job's parameters (results/params); values: the same, so Snakemake reruns the job when they change.
    params:
        file=params_file("structure"),
        values=lambda wc: mdconf.structure_params(config, wc.crystal),
    threads: config["md"]["threads"]
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd structure {input.cif:q} --name {wildcards.crystal:q} --cif-out {output.cif:q}"
        " --supercell-out {output.supercell:q} --info-out {output.info:q} --params {params.file:q}"
        " > {log:q} 2>&1"
