rule snapshots:
    input:
        trajectory=out("trajectory"),
        velocities=out("velocities"),
        positions=out("positions"),
        sites=out("supercell"),
        thermo=out("thermo"),
        run_info=out("run_info"),
        params=params_file("snapshots"),
    output:
        snapshots=out("snapshots"),
        summary=out("snapshots_summary"),
    log:
        "logs/snapshots/{crystal}/{ensemble}/{temperature}K/r{replica}.log",
    conda:
        "../../envs/base.yaml"
    shell:
        "python -m mdxrd snapshots --trajectory {input.trajectory:q} --velocities {input.velocities:q}"
        " --thermo {input.thermo:q} --run-info {input.run_info:q} --positions {input.positions:q}"
        " --sites {input.sites:q} --snapshots-out {output.snapshots:q}"
        " --summary-out {output.summary:q}"
        " --params {input.params:q} > {log:q} 2>&1"
