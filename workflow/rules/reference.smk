rule reference:
    input:
        cif=crystal_cif,
        relaxed_cif=out("relaxed_cif"),
        structure_info=out("structure_info"),
    output:
        reference=out("reference"),
        static=out("static"),
    log:
        "logs/reference/{crystal}.log",
    benchmark:
        "results/benchmarks/reference/{crystal}.tsv"
    params:
        file=params_file("reference"),
        xrd_file=params_file("reference_xrd"),
        values=[mdconf.reference_params(config), mdconf.xrd_params(config)],
    threads: config["md"]["threads"]
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd reference --cif {input.cif:q} --relaxed-cif {input.relaxed_cif:q}"
        " --structure-info {input.structure_info:q} --reference-out {output.reference:q}"
        " --static-out {output.static:q} --params {params.file:q} --xrd {params.xrd_file:q} > {log:q} 2>&1"
