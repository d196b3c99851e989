# MD: every run of a shard (mdxrd.md.run_shard), in lockstep batches of md.runs_per_job runs (auto: as many
# as md.max_job_mem_mb holds) with one batched potential evaluation per step, batch after batch. A run
# with finished outputs of the same parameters is reused; a run that fails leaves its batch-mates running,
# and the job fails naming it. Per run: results/md/<unit>/<ensemble>/<T>K/r<replica>/.
rule md:
    input:
        relax=manifest("relax"),
        params=params_file("md"),
    output:
        manifest=manifest("md"),
    log:
        "logs/md/{shard}.log",
    benchmark:
        "results/benchmarks/md/{shard}.tsv"
    params:
        supercell=lambda wc: os.path.join(path("structure"), "supercell.traj"),
        run_dir=lambda wc: path("md"),
    threads: config["md"]["threads"]
    # One GPU unless md.device is cpu, as --gpus=1 or --gres=gpu:1 (md.gpu_request), with md.gpu_job_cpus CPUs;
    # SITE (SLURM): add gpu_model="a100" for sbatch --gpus=<model>:1. Memory: the largest batch
    # (mdxrd.grid.md_job_mem_mb); time: the batches in turn.
    # A rerun after a time-limit kill resumes every run from its last checkpoint with twice the limit.
    resources:
        **md_gpu_resources(),
        mem_mb=md_mem_mb,
        runtime=md_runtime,
    conda:
        "../../envs/chgnet-cuda.yaml" if config["md"]["cuda_env"] else "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd md --params {input.params:q} --supercell '{params.supercell}' --run-dir '{params.run_dir}'"
        " --manifest {output.manifest:q} > {log:q} 2>&1"
