"""Stage manifests: what a stage read (sha256), the config slice it used, and the software that ran it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import agenttune
from agenttune.common.atomic import write_text

KEY_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "pyarrow", "accelerate", "deepspeed",
                "snakemake", "rouge-score", "sacrebleu")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder as the sorted (relative name, file hash) list of its files."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def config_hash(cfg: object) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def package_versions() -> dict:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def project_version() -> str:
    """The git commit of the project when run from a checkout (a `-dirty` suffix for local changes), else the
    package version."""
    root = Path(agenttune.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return agenttune.__version__


def write_json_atomic(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _input_entry(p) -> dict:
    """One named input: a path, or a list of them (such as a rule's `code`: the library modules it runs)."""
    if isinstance(p, (list, tuple)) or (not isinstance(p, (str, Path)) and hasattr(p, "__iter__")):
        return {"files": {str(f): sha256_path(f) for f in sorted(map(str, p))}}
    return {"path": str(p), "sha256": sha256_path(p)}


def stage_manifest(stage: str, inputs: dict[str, str | Path], config_slice: object, outputs: dict | None = None) -> dict:
    """Manifest content: kept free of times and hostnames so that identical runs give identical manifests."""
    return {
        "stage": stage,
        "inputs": {name: _input_entry(p) for name, p in sorted(inputs.items())},
        "config": config_slice,
        "config_hash": config_hash(config_slice),
        "project_version": project_version(),
        "packages": package_versions(),
        **({"outputs": outputs} if outputs else {}),
    }


def write_manifest(path: str | Path, stage: str, inputs: dict, config_slice: object, outputs: dict | None = None) -> dict:
    manifest = stage_manifest(stage, inputs, config_slice, outputs)
    write_json_atomic(path, manifest)
    return manifest
