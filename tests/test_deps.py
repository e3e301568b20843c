"""Rules list the library modules their script imports (agenttune.common.deps), so an edited module re-runs exactly the
stages that run it."""

import re
from pathlib import Path

from agenttune.common.deps import module_files

REPO = Path(__file__).resolve().parents[1]


def test_scoring_depends_on_the_scorer_not_on_generation():
    score = module_files("scripts/score.py", root=REPO, relative_to=REPO)
    assert {"agenttune/evaluate/metrics.py", "agenttune/render/parsing.py", "agenttune/evaluate/score.py"} <= set(score)
    assert not {"agenttune/evaluate/generate.py", "agenttune/evaluate/predict.py", "agenttune/train/trainer.py"} & set(score)


def test_generation_does_not_depend_on_the_scorer():
    predict = module_files("scripts/predict.py", root=REPO, relative_to=REPO)
    assert {"agenttune/evaluate/generate.py", "agenttune/evaluate/predict.py", "agenttune/render/react.py"} <= set(predict)
    assert "agenttune/evaluate/metrics.py" not in predict and "agenttune/evaluate/score.py" not in predict


def test_imports_inside_functions_and_registries_loaded_by_name_count():
    ingest = set(module_files("scripts/ingest.py", root=REPO, relative_to=REPO))
    # the registry (agenttune.traces.formats) imports every reader: each is a dependency of ingest
    readers = {f"agenttune/traces/readers/{p.name}" for p in (REPO / "agenttune/traces/readers").glob("*.py")}
    assert readers <= ingest
    # agenttune.render loads its template modules with importlib: every template is a dependency of formatting
    formatting = set(module_files("scripts/format_samples.py", root=REPO, relative_to=REPO))
    assert {f"agenttune/render/{name}.py" for name in ("react", "openai_json", "autogpt", "tool_call")} <= formatting
    # ingestion does not run the templates: an edited template re-formats, it does not re-ingest
    assert not any(f.startswith("agenttune/render/") for f in ingest) and "agenttune/data/format.py" not in ingest
    # agenttune.evaluate.general imports agenttune.evaluate.items inside a function
    assert "agenttune/evaluate/items.py" in module_files("scripts/general_items.py", root=REPO, relative_to=REPO)


def test_relative_imports_and_package_inits(tmp_path):
    pkg = tmp_path / "agenttune"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("from ..b import g\n")
    (pkg / "b.py").write_text("import json\n")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "run.py"
    script.write_text("from agenttune.sub import f\n")
    assert module_files(str(script), root=tmp_path, relative_to=tmp_path) == [
        "agenttune/__init__.py", "agenttune/b.py", "agenttune/sub/__init__.py", "agenttune/sub/a.py"]


def test_every_rule_with_a_script_lists_its_modules():
    rule_text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule |checkpoint |use rule )", smk.read_text()):
            script = re.search(r'script:\s*\n\s*"\.\./(scripts/\w+\.py)"', block)
            if script and not block.startswith("use rule"):
                listed = f'code=library_code("{script.group(1)}")' in block
                # or through an input function (the report's), checked in common.smk/evaluate_common.smk
                listed = listed or (f'"code": library_code("{script.group(1)}")' in rule_text)
                assert listed, (smk.name, block.splitlines()[0])
            if block.startswith("use rule") and "input:" in block:
                assert "code=library_code(" in block, (smk.name, block.splitlines()[0])
