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
        json=lambda wc: as_json(mdconf.xrd_params(config, wc.crystal)),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd xrd-stage --snapshots {input.snapshots:q} --reflections {output.reflections:q}"
        " --patterns {output.patterns:q} --structure-info {input.structure_info:q}"
        " --params {params.json:q} > {log:q} 2>&1"
