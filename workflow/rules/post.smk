# Post-processing: the snapshots (tau_corr, window figures, B_iso about the lattice sites) and the XRD
# (reflections, patterns per instrument condition, averages) of every run of a shard, one process per
# run up to the job's threads (mdxrd.post). Per run: results/snapshots/..., results/xrd/....
rule post:
    input:
        md=manifest("md"),
        params=params_file("post"),
    output:
        manifest=manifest("post"),
    log:
        "logs/post/{shard}.log",
    benchmark:
        "results/benchmarks/post/{shard}.tsv"
    params:
        dirs=templates("md", "structure", "reference", "snapshots", "xrd"),
    # Seconds per run; Snakemake lowers the threads to --cores on a laptop; a cluster profile may
    # set-threads post=N.
    threads: 8
    resources:
        mem_mb=lambda wc, threads, attempt: attempt * (1000 + 1500 * threads),
        runtime=lambda wc, threads, attempt: attempt * (10 + shard_n_runs(wc) // max(1, threads)),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd post --params {input.params:q} {params.dirs} --workers {threads}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"
