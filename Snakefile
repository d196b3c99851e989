# mdxrd: CHGNet molecular dynamics -> snapshots -> powder XRD -> averaged patterns -> Parquet.
# Physics: METHOD.md (shared with the project); configuration: config/config.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/structure.smk"
include: "workflow/rules/md.smk"
include: "workflow/rules/snapshots.smk"
include: "workflow/rules/xrd.smk"
include: "workflow/rules/average.smk"
include: "workflow/rules/dataset.smk"


rule all:
    input:
        DATASET,
    default_target: True
