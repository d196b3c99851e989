# MD: one job per md.runs_per_job runs of a crystal (default all of them), advanced in lockstep with
# one batched potential evaluation per step (mdxrd.md.run_md_batch). Each run keeps its own outputs,
# checkpoint and failure. One rule per job of the split (mdxrd.config.md_batches): `md` when a
# crystal's runs make one job, md_0, md_1, ... otherwise.
for _i, _batch in enumerate(MD_BATCHES):

    rule:
        name:
            "md" if len(MD_BATCHES) == 1 else f"md_{_i}"
        input:
            supercell=out("supercell"),
            params=md_run_files(params_file("md"), _batch),
        output:
            thermo=md_run_files(out("thermo"), _batch),
            trajectory=md_run_files(out("trajectory"), _batch),
            velocities=md_run_files(out("velocities"), _batch),
            positions=md_run_files(out("positions"), _batch),
            info=md_run_files(out("run_info"), _batch),
        log:
            f"logs/md/{{crystal}}/job{_i}.log",
        benchmark:
            f"results/benchmarks/md/{{crystal}}/job{_i}.tsv"
        params:
            runs=md_run_args,
        threads: config["md"]["threads"]
        # One GPU when the executor can give one (md.device: auto); SITE (SLURM): add gpu_model="a100"
        # for sbatch --gpus=<model>:1. Memory: mdxrd.config.md_job_mem_mb (every run's CHGNet graph at
        # once). Time: 1.5-10 ms per atom and step on one CPU thread (Si 64 atoms 0.1 s/step, Cu 32
        # atoms 0.2, Al2O3 240 atoms 2.3); 20 ms per atom-step and run leaves room. A rerun after a
        # time-limit kill resumes every run from its last checkpoint with twice the limit.
        resources:
            gpu=1,
            mem_mb=lambda wc, attempt, n=len(_batch): attempt * mdconf.md_job_mem_mb(config, crystal_atoms(wc), n),
            runtime=lambda wc, attempt, n=len(_batch): attempt
            * (10 + int(0.02 * crystal_atoms(wc) * config["md"]["n_steps"] * n / 60)),
        conda:
            "../../envs/chgnet.yaml"
        shell:
            "python -m mdxrd md {input.supercell:q} {params.runs} > {log:q} 2>&1"
