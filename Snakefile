# agenttune: raw tool-use traces -> samples -> token shards -> per-epoch checkpoints -> evaluation report.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")


include: "rules/common.smk"
include: "rules/traces.smk"
include: "rules/data.smk"
include: "rules/tokenize.smk"
include: "rules/cluster.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        f"{OUT}/report.md",
