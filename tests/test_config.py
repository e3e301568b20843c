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
