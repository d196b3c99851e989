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
        json=as_json(mdconf.reference_params(config)),
        xrd=lambda wc: as_json(mdconf.xrd_params(config)),
    threads: config["md"]["threads"]
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd reference --cif {input.cif:q} --relaxed-cif {input.relaxed_cif:q}"
        " --structure-info {input.structure_info:q} --reference-out {output.reference:q}"
        " --static-out {output.static:q} --params {params.json:q} --xrd {params.xrd:q} > {log:q} 2>&1"
