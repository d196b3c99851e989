# QC and report figures of every unit of a shard (mdxrd.qc.run_shard): a(T), alpha per axis, B(T), B_iso
# against the run's own pattern, experiment; the QC table (results/qc/<unit>/) and the figures
# (results/plots/<unit>/, linked into results/report/<shard>/<unit>/ for snakemake --report).
rule qc:
    input:
        relax=manifest("relax"),
        post=manifest("post"),
        params=params_file("qc"),
    output:
        manifest=manifest("qc"),
        report=report(directory(path("report")), patterns=["{unit}/{figure}.{ext}"],
                      caption="../report/figures.rst", category="{unit}", labels={"figure": "{figure}"}),
    log:
        "logs/qc/{shard}.log",
    params:
        dirs=templates("structure", "reference", "qc", "plots", "md", "snapshots", "xrd"),
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: attempt * (10 + shard_n_units(wc) // 4),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd qc --params {input.params:q} {params.dirs} --report-dir {output.report:q}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"


rule qc_potentials:
    input:
        qc=expand(manifest("qc"), shard=SHARDS),
        config=path("config"),
    output:
        csv=path("qc_potentials_csv"),
        html=report(path("qc_potentials"), caption="../report/potentials.rst", category="potentials",
                    labels={"figure": "potentials against experiment"}),
    log:
        "logs/qc/potentials.log",
    params:
        qc_dir=lambda wc: path("qc"),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd qc-potentials --config {input.config:q} --qc-dir '{params.qc_dir}'"
        " --csv-out {output.csv:q} --html-out {output.html:q} > {log:q} 2>&1"
