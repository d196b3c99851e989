rule xrd:
    input:
        snapshots=out("snapshots"),
        structure_info=out("structure_info"),
        params=params_file("xrd"),
    output:
        reflections=out("reflections"),
        patterns=out("patterns"),
        average=out("average"),
    log:
        "logs/xrd/{crystal}/{ensemble}/{temperature}K/r{replica}.log",
    benchmark:
        "results/benchmarks/xrd/{crystal}/{ensemble}/{temperature}K/r{replica}.tsv"
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd xrd-stage --snapshots {input.snapshots:q} --reflections {output.reflections:q}"
        " --patterns {output.patterns:q} --average {output.average:q} --structure-info {input.structure_info:q}"
        " --params {input.params:q} > {log:q} 2>&1"
