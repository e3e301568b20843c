# agenttune: raw tool-use traces -> samples -> token shards -> per-epoch checkpoints -> evaluation report.
import os

from snakemake.utils import min_version, validate

from agenttune.common.config import with_defaults

min_version("9.0")
# The conda envs' post-deploy scripts install the project from here (envs/*.post-deploy.sh), also with --directory.
os.environ.setdefault("AGENTTUNE_SRC", workflow.basedir)


# The demo's config is the configuration only when none is given: a --configfile is the whole configuration, and what
# it leaves out takes the schema's defaults, never the demo's values (the demo's template mix, learning rate and CPU
# peak FLOP/s would otherwise leak into every other run). An overlay names the demo first:
# --configfile config/config.yaml config/bfcl.yaml. `--config key=value` still goes on top of either.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")
# Every default from the schema, also inside objects the config leaves out (validate fills only present ones).
config.update(with_defaults(config))


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
