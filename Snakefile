# mdxrd: CHGNet molecular dynamics -> snapshots -> powder XRD -> averaged patterns -> Parquet.
# Physics: METHOD.md (shared with the project); configuration: config/config.yaml. Every stage runs as
# one job per shard of crystals (shards.crystals; mdxrd.grid).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/relax.smk"
include: "workflow/rules/md.smk"
include: "workflow/rules/post.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/dataset.smk"


rule all:
    input:
        DATASET,
        report_inputs,
    default_target: True
