rule xrd:
    input:
        snapshots=out("snapshots"),
        structure_info=out("structure_info"),
    output:
        reflections=out("reflections"),
        patterns=out("patterns"),
    log:
        "logs/xrd/{crystal}/{ensemble}/{temperature}K/r{replica}.log",
    benchmark:
        "results/benchmarks/xrd/{crystal}/{ensemble}/{temperature}K/r{replica}.tsv"
    params:
        file=params_file("xrd"),
        values=lambda wc: mdconf.xrd_params(config, wc.crystal),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd xrd-stage --snapshots {input.snapshots:q} --reflections {output.reflections:q}"
        " --patterns {output.patterns:q} --structure-info {input.structure_info:q}"
        " --params {params.file:q} > {log:q} 2>&1"
