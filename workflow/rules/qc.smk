rule qc:
    input:
        reference=out("reference"),
        runs=lambda wc: crystal_run_files(wc.crystal, QC_KINDS),
    output:
        qc=out("qc"),
        table=out("qc_table"),
    log:
        "logs/qc/{crystal}.log",
    params:
        runs=lambda wc: as_json(mdconf.crystal_runs(config, wc.crystal, QC_KINDS)),
        crystal=lambda wc: as_json(mdconf.crystal(config, wc.crystal)),
        tolerances=as_json(config["qc"]),
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd qc --reference {input.reference:q} --runs {params.runs:q} --crystal {params.crystal:q}"
        " --tolerances {params.tolerances:q} --qc-out {output.qc:q} --table-out {output.table:q} > {log:q} 2>&1"
