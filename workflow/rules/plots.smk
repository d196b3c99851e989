rule plots:
    input:
        static=out("static"),
        qc=out("qc"),
        table=out("qc_table"),
        params=params_file("plots"),
        runs=lambda wc: crystal_run_files(wc.crystal, mdconf.PLOT_KINDS),
    output:
        patterns=report(out("plot_patterns"), caption="../report/patterns.rst", category="{crystal}",
                        labels={"figure": "1 averaged patterns"}),
        zoom=report(out("plot_zoom"), caption="../report/zoom.rst", category="{crystal}",
                    labels={"figure": "2 strongest peak"}),
        thermal=report(out("plot_thermal"), caption="../report/thermal.rst", category="{crystal}",
                       labels={"figure": "3 a(T) and B(T)"}),
        traces=report(out("plot_traces"), caption="../report/traces.rst", category="{crystal}",
                      labels={"figure": "4 thermo traces"}),
        qc_html=report(out("qc_html"), caption="../report/qc.rst", category="{crystal}",
                       labels={"figure": "5 QC table"}),
    log:
        "logs/plots/{crystal}.log",
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd plots --name {wildcards.crystal:q} --static {input.static:q} --qc {input.qc:q}"
        " --table {input.table:q} --runs {input.params:q}#runs --md {input.params:q}#md"
        " --patterns-out {output.patterns:q} --zoom-out {output.zoom:q} --thermal-out {output.thermal:q}"
        " --traces-out {output.traces:q} --qc-html-out {output.qc_html:q} > {log:q} 2>&1"
