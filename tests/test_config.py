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


def test_a_config_that_leaves_the_recipe_out_plans_with_the_real_data_defaults(tmp_path):
    """config/own-data.yaml sets no training recipe, template mix or decoding: Snakemake's validation fills them
    from the schema (the real-data defaults, docs/first-run.md) and the pipeline plans with them. (The demo, the
    paper-scale and the real-data configs set every one of these keys, so the defaults do not change them.)"""
    from agenttune.common.config import with_defaults

    cfg = load(REPO / "config" / "own-data.yaml")
    assert "epochs" not in cfg["train"] and "templates" not in cfg["format"] and "lambda" not in cfg["evaluate"]
    filled = copy.deepcopy(cfg)
    validate(filled, SCHEMA, set_default=True)
    assert filled["train"] == with_defaults(cfg)["train"]
    recipe = {k: filled["train"][k] for k in ("epochs", "learning_rate", "lr_scheduler", "warmup_ratio",
                                              "weight_decay", "batch_size", "grad_accum", "precision")}
    demo = load(REPO / "config" / "config.yaml")["train"]
    assert recipe["learning_rate"] < demo["learning_rate"] and recipe["grad_accum"] > demo["grad_accum"]
    assert filled["format"]["templates"] == with_defaults(cfg)["format"]["templates"]
    assert set(filled["format"]["templates"]) == {"openai_json", "tool_call", "react"}
    # The dry run of the whole pipeline plans one train_epoch job per default epoch and scores the val split.
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "-n", "--printshellcmds", "--configfile", "config/own-data.yaml",
                           "--directory", str(REPO), "--config", f"run=defaults-{tmp_path.name}"],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("rule train_epoch:") == recipe["epochs"]
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
