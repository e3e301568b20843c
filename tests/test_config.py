"""Configuration mistakes fail early with the schema's message, before any job is planned."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "config" / "schema.yaml")
CONFIGS = sorted((REPO / "config").rglob("*.yaml"))
CONFIGS = [p for p in CONFIGS if p.name not in ("schema.yaml",) and not p.name.startswith("site")]


def load(path):
    return yaml.safe_load(Path(path).read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_are_valid(path):
    cfg = load(path)
    if "run" not in cfg:
        # An overlay (used as a second --configfile): check it merged on top of the default, as Snakemake does.
        cfg = _merge(load(REPO / "config" / "config.yaml"), cfg)
    validate(cfg, SCHEMA)


def _merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set(cfg, dotted, value):
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value


@pytest.mark.parametrize("dotted, value, words", [
    ("train.epochs", 0, "minimum"),
    ("train.epochs", "two", "is not of type"),
    ("evaluate.lambda", -0.1, "minimum"),
    ("train.learning_rate", 0, "exclusiveMinimum"),
    ("format.templates", {"no_such_template": 1.0}, "no_such_template"),
    ("format.templates", {"react": 0}, "exclusiveMinimum"),
    ("format.negatives.ratio", 0, "exclusiveMinimum"),
    ("format.negatives.ratio", -4, "exclusiveMinimum"),
    ("split.test", 0, "exclusiveMinimum"),
    ("train.typo_key", 1, "Additional properties"),
    ("compute.device", "tpu", "is not one of"),
])
def test_config_mistakes_are_rejected(dotted, value, words):
    cfg = copy.deepcopy(load(REPO / "config" / "config.yaml"))
    _set(cfg, dotted, value)
    with pytest.raises(WorkflowError) as exc:
        validate(cfg, SCHEMA)
    assert words in str(exc.value)


def test_snakemake_stops_on_a_bad_config_before_planning():
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "-n", "--config", "train={'epochs': 0}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "minimum" in proc.stderr + proc.stdout


# --------------------------------------------------------------------------- defaults come from the schema only

def test_defaults_fill_objects_the_config_leaves_out():
    from agenttune.common.config import section_with_defaults, with_defaults

    cfg = load(REPO / "config" / "config.yaml")
    cfg["format"].pop("negatives")
    cfg["data"]["sources"] = [{"name": "g", "path": "g.json", "format": "sharegpt_tools"}]
    before = copy.deepcopy(cfg)
    full = with_defaults(cfg)
    assert cfg == before  # a copy; the input is not changed
    assert full["format"]["negatives"] == {"ratio": 4, "order": ["user", "no_tool", "mined"], "shares": {},
                                           "max_tool_lists": 512, "min_score": 0.0}
    assert full["split"]["decontam"] == {"ngram": 8, "boilerplate_docs": 10}
    assert full["data"]["sources"][0] == {"name": "g", "path": "g.json", "format": "sharegpt_tools", "limit": None,
                                          "role": "traces"}
    assert full["evaluate"]["general"] == {"source": "auto", "max_items": 64, **cfg["evaluate"].get("general", {})}
    assert full["train"]["max_grad_norm"] == 1.0 and full["evaluate"]["engine"] == "exact"
    # Blocks whose absence means "off" stay absent.
    assert "deepspeed" not in full["train"] and "bfcl" not in full["evaluate"] and "val" not in full["evaluate"]
    # Given values win, at every depth.
    assert section_with_defaults({"negatives": {"ratio": 2}}, "format")["negatives"]["ratio"] == 2
    validate(full, SCHEMA)


def workflow_config(*configfiles: str, **overrides) -> tuple[dict, dict]:
    """(the config, the train_epoch rule's `train` params) exactly as the real Snakefile gives them to its rules, for
    `snakemake --configfile <configfiles> --config <overrides>` (parsed in-process; nothing runs)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DeploymentSettings, OutputSettings, ResourceSettings,
                                          StorageSettings, WorkflowSettings)

    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                          config_settings=ConfigSettings(configfiles=[REPO / f for f in configfiles],
                                                         config=dict(overrides)),
                          storage_settings=StorageSettings(), workflow_settings=WorkflowSettings(),
                          deployment_settings=DeploymentSettings(), snakefile=REPO / "Snakefile", workdir=REPO)
        workflow = wf._workflow
        return copy.deepcopy(dict(workflow.config)), copy.deepcopy(dict(workflow.get_rule("train_epoch").params.train))


def test_a_config_file_is_the_whole_configuration_and_leaves_the_rest_to_the_schema_defaults():
    """`--configfile config/own-data.yaml` sets no training recipe, template mix or decoding: the rules get the
    schema's real-data defaults (docs/first-run.md), not the demo's values from config/config.yaml, which the
    Snakefile reads only when no config file is given. Before, every key a config left out came from the demo: the
    demo's learning rate and ReAct-only templates in a user's first run, `react: 1.0` added to the LoRA/QLoRA configs'
    native templates, the CPU's peak FLOP/s in the A100 configs' cost preflight."""
    from agenttune.common.config import with_defaults

    own = load(REPO / "config" / "own-data.yaml")
    demo = load(REPO / "config" / "config.yaml")
    assert "learning_rate" not in own["train"] and "templates" not in own["format"] and "lambda" not in own["evaluate"]
    cfg, train = workflow_config("config/own-data.yaml")
    assert cfg["train"] == with_defaults(own)["train"] and train["learning_rate"] == cfg["train"]["learning_rate"]
    assert train["learning_rate"] != demo["train"]["learning_rate"] and train["grad_accum"] != demo["train"]["grad_accum"]
    assert cfg["format"]["templates"] == with_defaults(own)["format"]["templates"] != demo["format"]["templates"]
    assert cfg["evaluate"]["max_new_tokens"] == with_defaults(own)["evaluate"]["max_new_tokens"]
    assert cfg["data"]["demo"]["n_traces"] == 0
    # Freeze tuning without its layer count is a config error naming the key, not a KeyError in the training job.
    freeze = copy.deepcopy(own)
    del freeze["train"]["freeze_trainable_layers"]
    with pytest.raises(WorkflowError, match="freeze_trainable_layers"):
        validate(freeze, SCHEMA)
    # The paper-scale configs: their own templates only, and the A100's peak FLOP/s (no CPU override).
    lora, _ = workflow_config("config/agenttune-7b-lora.yaml")
    assert lora["format"]["templates"] == load(REPO / "config" / "agenttune-7b-lora.yaml")["format"]["templates"]
    assert "device_peak_flops" not in lora["compute"]
    # No config file: the demo, with `--config` on top; an overlay still goes on top of the demo when named after it.
    cfg, train = workflow_config(run="x")
    assert cfg["run"] == "x" and train["learning_rate"] == demo["train"]["learning_rate"]
    cfg, _ = workflow_config("config/config.yaml", "config/bfcl.yaml")
    assert cfg["format"]["templates"] == demo["format"]["templates"] and "bfcl" in cfg["evaluate"]


def test_a_config_that_leaves_the_recipe_out_plans_the_pipeline(tmp_path):
    """The dry run of the whole pipeline on config/own-data.yaml: one train_epoch job per default epoch, and the
    validation split scored (the report then reports the epoch best there)."""
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "-n", "--configfile", "config/own-data.yaml", "--config",
                           f"run=defaults-{tmp_path.name}"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from agenttune.common.config import with_defaults

    epochs = with_defaults(load(REPO / "config" / "own-data.yaml"))["train"]["epochs"]
    assert proc.stdout.count("rule train_epoch:") == epochs
    assert "rule predict_benchmark:" in proc.stdout and "benchmark=val" in proc.stdout


def test_no_module_keeps_a_copy_of_a_schema_default():
    """`.get("<key>", <the schema's default>)` in the package, the scripts or the rules is a second copy of a
    default that can drift from config/schema.yaml; the config reaching them is filled by agenttune.common.config."""
    import re

    defaults: dict[str, list] = {}

    def walk(node):
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "default" in sub and sub["default"] not in (None, {}, []):
                    defaults.setdefault(key, []).append(sub["default"])
                walk(sub)
            walk(node.get("items"))

    walk(load(SCHEMA))
    call = re.compile(r"""\.get\(\s*["']([a-z_]+)["']\s*,\s*([^()\n]+?)\s*\)""")
    found = []
    for path in sorted([*REPO.glob("agenttune/**/*.py"), *REPO.glob("scripts/*.py"), *REPO.glob("rules/*.smk")]):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for key, value in call.findall(line):
                try:
                    literal = eval(value, {})  # noqa: S307 - literals only; names raise
                except Exception:  # noqa: BLE001
                    continue
                # By value (120 and 120.0 are one default), but True is not 1.
                if any(literal == d and isinstance(literal, bool) == isinstance(d, bool)
                       for d in defaults.get(key, ())):
                    found.append(f"{path.relative_to(REPO)}:{n}: .get({key!r}, {value})")
    assert not found, "schema defaults copied into code:\n" + "\n".join(found)
