rule dataset_part:
    input:
        dataset_part_inputs,
    output:
        out("dataset_part"),
    log:
        "logs/dataset/{crystal}.log",
    benchmark:
        "results/benchmarks/dataset/{crystal}.tsv"
    params:
        file=params_file("dataset"),
        values=lambda wc: [mdconf.crystal(config, wc.crystal), config["dataset"], config["seed"]],
        results=lambda wc, output: str(Path(output[0]).parents[2]),  # results/dataset/crystal=X/part-0
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset-part --params {params.file:q} --results {params.results:q} -o {output:q} > {log:q} 2>&1"


rule dataset:
    input:
        expand(out("dataset_part"), crystal=CRYSTALS),
    output:
        DATASET,
    log:
        "logs/dataset.log",
    benchmark:
        "results/benchmarks/dataset.tsv"
    params:
        config=f"{RESULTS}/{mdconf.LAYOUT['params_config']}",
        config_sha256=mdconf.config_hash(config),
        dataset_dir=lambda wc, output: str(Path(output[0]).parent),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd dataset --config {params.config:q} --dataset-dir {params.dataset_dir:q} -o {output:q}"
        " > {log:q} 2>&1"
