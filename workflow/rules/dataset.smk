rule dataset:
    input:
        dataset_inputs,
    output:
        DATASET,
    log:
        "logs/dataset.log",
    params:
        config=as_json(config),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset --config-json {params.config:q} --results results -o {output:q}"
        " > {log:q} 2>&1"
