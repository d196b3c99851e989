rule reference:
    input:
        cif=crystal_cif,
        relaxed_cif=out("relaxed_cif"),
        structure_info=out("structure_info"),
        params=params_file("reference"),
    output:
        reference=out("reference"),
        static=out("static"),
    log:
        "logs/reference/{crystal}.log",
    benchmark:
        "results/benchmarks/reference/{crystal}.tsv"
    threads: config["md"]["threads"]
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd reference --cif {input.cif:q} --relaxed-cif {input.relaxed_cif:q}"
        " --structure-info {input.structure_info:q} --reference-out {output.reference:q}"
        " --static-out {output.static:q} --params {input.params:q}#reference --xrd {input.params:q}#xrd > {log:q} 2>&1"
