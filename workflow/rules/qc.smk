rule qc:
    input:
        reference=out("reference"),
        runs=lambda wc: crystal_run_files(wc.crystal, mdconf.QC_KINDS),
    output:
        qc=out("qc"),
        table=out("qc_table"),
    log:
        "logs/qc/{crystal}.log",
    params:
        runs=params_file("qc", "runs"),
        crystal=params_file("qc", "crystal"),
        tolerances=params_file("qc", "tolerances"),
        values=lambda wc: [mdconf.crystal(config, wc.crystal), config["qc"], config["ensembles"],
                           config["temperatures_K"], config["replicas"]],
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd qc --reference {input.reference:q} --runs {params.runs:q} --crystal {params.crystal:q}"
        " --tolerances {params.tolerances:q} --qc-out {output.qc:q} --table-out {output.table:q} > {log:q} 2>&1"
