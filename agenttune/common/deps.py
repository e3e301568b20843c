"""Which library modules a stage's script runs: rules list them as inputs so that editing one re-runs that stage.

Snakemake's `code` rerun trigger sees a rule's script, not the modules the script imports. A rule that lists the
whole package as input would re-run on any edit; a hand-kept list goes stale. So the list is computed: the
`agenttune` modules a script imports, followed transitively through the package's own imports (read with `ast`,
nothing is executed). Imports inside functions count too: they run when the stage runs.

A package `__init__` that loads its sibling modules by name (`importlib.import_module`, e.g. the template
registry in agenttune/render/__init__.py) depends on every module of that package.

    module_files("scripts/score.py")  ->  ["agenttune/__init__.py", "agenttune/evaluate/score.py", ...]
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

PACKAGE = "agenttune"
_ROOT = Path(__file__).resolve().parents[2]  # the repository (or site-packages) folder holding the package


def _module_path(name: str, root: Path) -> Path | None:
    """The file of a dotted module name inside the package, or None when it is not one of ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> set[Path]:
    """Package files that one file imports directly (plus the __init__ of every package on the way)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = _module_name(path, root) if path.is_relative_to(root / PACKAGE) else ""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    loads_siblings = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = own.split(".") if is_package else own.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from pkg import name`: name may be a submodule
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            loads_siblings = True
    found: set[Path] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            module = _module_path(".".join(parts[:i]), root)
            if module is not None:
                found.add(module)
    if loads_siblings and is_package:
        found.update(p for p in path.parent.glob("*.py"))
    return found


@functools.lru_cache(maxsize=None)
def _closure(script: str, root: str) -> tuple[str, ...]:
    root_path = Path(root)
    start = Path(script) if Path(script).is_absolute() else root_path / script
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        for module in _imports(path, root_path):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return tuple(sorted(str(p.relative_to(root_path)) for p in seen))


def module_files(*scripts: str, root: str | Path = _ROOT, relative_to: str | Path | None = None) -> list[str]:
    """Package files that the given scripts (paths relative to `root`, the folder holding the package) import,
    directly or not; as paths relative to `relative_to` (default: the working directory, as Snakemake wants its
    inputs)."""
    root = Path(root).resolve()
    base = Path(relative_to).resolve() if relative_to is not None else Path.cwd()
    files: set[str] = set()
    for script in scripts:
        files.update(os.path.relpath(root / f, base) for f in _closure(str(script), str(root)))
    return sorted(files)
