rule qc:
    input:
        reference=out("reference"),
        params=params_file("qc"),
        runs=lambda wc: crystal_run_files(wc.crystal, mdconf.QC_KINDS),
    output:
        qc=out("qc"),
        table=out("qc_table"),
    log:
        "logs/qc/{crystal}.log",
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd qc --reference {input.reference:q} --runs {input.params:q}#runs --crystal {input.params:q}#crystal"
        " --tolerances {input.params:q}#tolerances --qc-out {output.qc:q} --table-out {output.table:q} > {log:q} 2>&1"
