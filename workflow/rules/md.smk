rule md:
    input:
        supercell=out("supercell"),
        params=params_file("md"),
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
        out_dir=lambda wc, output: str(Path(output.thermo).parent),
    threads: config["md"]["threads"]
    # gpu: profiles/default. Memory: CHGNet's graph (bonds, angles) grows about as atoms^2, ~0.1 GB
    # at 64 atoms and ~1.2 GB at 240 with the fast calculator (stock: ~0.35 and ~6 GB), on top of
    # ~0.35 GB for Python, torch and the model. Time: 1.5-10 ms per atom and step on one CPU
    # thread (Si 64 atoms 0.1 s/step, Cu 32 atoms 0.2, Al2O3 240 atoms 2.3); 20 ms leaves room.
    # A rerun after a time-limit kill resumes from the last checkpoint with twice the limit.
    resources:
        mem_mb=lambda wc, attempt: attempt
        * int(1000 + (0.12 if config["md"]["calculator"] == "stock" else 0.025) * crystal_atoms(wc) ** 2),
        runtime=lambda wc, attempt: attempt
        * (10 + int(0.02 * crystal_atoms(wc) * config["md"]["n_steps"] / 60)),
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd md {input.supercell:q} --out-dir {params.out_dir:q} --params {input.params:q}"
        " > {log:q} 2>&1"
