rule qc:
    input:
        reference=out("reference"),
        sites=out("supercell"),
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
        " --tolerances {input.params:q}#tolerances --sites {input.sites:q} --qc-out {output.qc:q}"
        " --table-out {output.table:q} > {log:q} 2>&1"


rule qc_potentials:
    input:
        tables=expand(out("qc_table"), crystal=UNITS),
        config=out("params_config"),
    output:
        csv=out("qc_potentials_csv"),
        html=report(out("qc_potentials"), caption="../report/potentials.rst", category="potentials",
                    labels={"figure": "potentials against experiment"}),
    log:
        "logs/qc/potentials.log",
    params:
        results=lambda wc, input: str(Path(input.config).parents[1]),  # results/params/config.json
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd qc-potentials --config {input.config:q} --results {params.results:q}"
        " --csv-out {output.csv:q} --html-out {output.html:q} > {log:q} 2>&1"
