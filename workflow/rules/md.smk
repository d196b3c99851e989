rule md:
    input:
        supercell=out("supercell"),
    output:
        thermo=out("thermo"),
        trajectory=out("trajectory"),
        velocities=out("velocities"),
        info=out("run_info"),
    log:
        "logs/md/{crystal}/{ensemble}/{temperature}K/r{replica}.log",
    benchmark:
        "results/benchmarks/md/{crystal}/{ensemble}/{temperature}K/r{replica}.tsv"
    params:
        json=lambda wc: as_json(mdconf.md_params(config, run_key(wc))),
        out_dir=lambda wc, output: str(Path(output.thermo).parent),
    threads: config["md"]["threads"]
    resources:
        mem_mb=lambda wc: 1000 + 25 * crystal_atoms(wc),
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd md {input.supercell:q} --out-dir {params.out_dir:q} --params {params.json:q}"
        " > {log:q} 2>&1"
