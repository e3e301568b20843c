"""The house shows the pipeline: one subpackage per stage, data flowing one way, no import circles.

Every import statement inside the package is read with `ast` (module level and inside functions alike: both run
when the stage runs); the template registry's `importlib` loads (agenttune/render/__init__.py) are not imports of
this kind, and stage subpackage `__init__` files hold only a docstring. A module may import its own stage, an earlier stage and the shared layer (docs/architecture.md); no module
may take part in an import circle; the package never imports snakemake.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "agenttune"
# The stages in data-flow order (docs/architecture.md); `common` is the shared layer under all of them.
STAGES = ["common", "demo", "traces", "render", "data", "tokenize", "cluster", "train", "evaluate", "report"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules one file imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    found = set()
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules and n != own)
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else None


def test_every_module_lives_in_a_stage_subpackage():
    loose = [m for m, p in _modules().items() if m != "agenttune" and _stage(m) not in STAGES]
    assert not loose, f"modules outside the stage subpackages (docs/architecture.md): {loose}"


def test_a_stage_imports_only_earlier_stages_and_the_shared_layer():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        stage = _stage(name)
        if stage is None:
            continue
        for target in _imports(path, modules):
            other = _stage(target)
            if other is not None and STAGES.index(other) > STAGES.index(stage):
                wrong.append(f"{name} ({stage}) imports {target} ({other}), a later stage")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_package_never_imports_snakemake():
    offenders = [name for name, path in _modules().items()
                 if any(isinstance(n, (ast.Import, ast.ImportFrom))
                        and any((a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] == "snakemake"
                                for a in n.names)
                        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert not offenders


@pytest.mark.parametrize("rule_file", sorted((REPO / "rules").glob("*.smk")), ids=lambda p: p.name)
def test_each_rule_file_names_a_stage(rule_file):
    """rules/<stage>.smk runs agenttune/<stage>/ (common.smk and evaluate_common.smk hold shared input functions)."""
    stem = rule_file.stem.removesuffix("_common")
    assert stem == "common" or stem in STAGES, f"{rule_file.name}: no agenttune/{stem}/ stage"
    assert (PACKAGE / stem).is_dir() or stem == "common"
