# The dataset: one Parquet part per shard (every pattern of its crystals with labels and provenance),
# then the shared schema and metadata (results/dataset/_common_metadata; parts of shards no longer
# configured are removed).
rule dataset_part:
    input:
        relax=manifest("relax"),
        post=manifest("post"),
        params=params_file("dataset"),
    output:
        path("dataset_part"),
    log:
        "logs/dataset/{shard}.log",
    benchmark:
        "results/benchmarks/dataset/{shard}.tsv"
    params:
        dirs=templates("structure", "reference", "md", "snapshots", "xrd"),
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: attempt * (10 + shard_n_runs(wc) // 60),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset-part --params {input.params:q} {params.dirs} -o {output:q} > {log:q} 2>&1"


rule dataset:
    input:
        parts=expand(path("dataset_part"), shard=SHARDS),
        config=path("config"),
    output:
        DATASET,
    log:
        "logs/dataset.log",
    benchmark:
        "results/benchmarks/dataset.tsv"
    params:
        parts=lambda wc, input: " ".join(f"--part {p}" for p in input.parts),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset --config {input.config:q} {params.parts} -o {output:q} > {log:q} 2>&1"
