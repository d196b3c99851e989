def dataset_inputs(wildcards):
    kinds = ("structure_info", "run_info", "snapshots", "snapshots_summary", "patterns", "average")
    return [str(key.path(kind)) for key in RUNS for kind in kinds]


rule dataset:
    input:
        dataset_inputs,
    output:
        DATASET,
    log:
        "logs/dataset.log",
    params:
        config=as_json(config),
    resources:
        mem_mb=2000,
    conda:
        "../../envs/base.yaml"
    shell:
        "{PYTHON} -m mdxrd dataset --config-json {params.config:q} --results results -o {output:q}"
        " > {log:q} 2>&1"
