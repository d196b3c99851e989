rule average:
    input:
        patterns=out("patterns"),
    output:
        average=out("average"),
    log:
        "logs/average/{crystal}/{ensemble}/{temperature}K/r{replica}.log",
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd average --patterns {input.patterns:q} --average-out {output.average:q}"
        " > {log:q} 2>&1"
