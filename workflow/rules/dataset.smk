rule dataset_part:
    input:
        dataset_part_inputs,
        params=params_file("dataset"),
    output:
        out("dataset_part"),
    log:
        "logs/dataset/{crystal}.log",
    benchmark:
        "results/benchmarks/dataset/{crystal}.tsv"
    params:
        results=lambda wc, output: str(Path(output[0]).parents[2]),  # results/dataset/crystal=X/part-0
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset-part --params {input.params:q} --results {params.results:q} -o {output:q} > {log:q} 2>&1"


rule dataset:
    input:
        parts=expand(out("dataset_part"), crystal=CRYSTALS),
        config=out("params_config"),
    output:
        DATASET,
    log:
        "logs/dataset.log",
    benchmark:
        "results/benchmarks/dataset.tsv"
    params:
        dataset_dir=lambda wc, output: str(Path(output[0]).parent),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset --config {input.config:q} --dataset-dir {params.dataset_dir:q} -o {output:q}"
        " > {log:q} 2>&1"
