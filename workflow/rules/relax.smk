# 0 K stage: relax every unit of a shard with its potential, its E(V) reference and static patterns
# (mdxrd.relax). Per unit: results/structure/<unit>/, results/reference/<unit>/.
rule relax:
    input:
        cifs=shard_cifs,
        params=params_file("relax"),
    output:
        manifest=manifest("relax"),
    log:
        "logs/relax/{shard}.log",
    benchmark:
        "results/benchmarks/relax/{shard}.tsv"
    params:
        cifs=cif_args,
        dirs=templates("structure", "reference"),
    threads: config["md"]["threads"]
    # CHGNet on the unit cell: seconds to a minute per unit (relaxation, 9-point E(V) scan).
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: attempt * (10 + 2 * shard_n_units(wc)),
    conda:
        "../../envs/chgnet.yaml"
    shell:
        "python -m mdxrd relax --params {input.params:q} {params.cifs} {params.dirs} --manifest {output.manifest:q}"
        " > {log:q} 2>&1"
