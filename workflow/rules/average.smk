rule average:
    input:
        reflections=out("reflections"),
    output:
        average=out("average"),
    log:
        "logs/average/{crystal}/{ensemble}/{temperature}K/r{replica}.log",
    params:
        json=as_json(mdconf.average_params(config)),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd average --reflections {input.reflections:q} --average-out {output.average:q}"
        " --params {params.json:q} > {log:q} 2>&1"
