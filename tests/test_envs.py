"""The per-rule conda envs (envs/*.yaml) deploy the way `snakemake --sdm conda` deploys them.

What Snakemake 9.27.1 does (snakemake/deployment/conda.py): `Env.create` copies the env file to
`<envs dir>/<hash>_.yaml` (the envs dir is `.snakemake/conda` of the directory Snakemake runs in) and runs
`conda env create --file <that copy> --prefix <envs dir>/<hash>_`; conda writes the yaml's pip list to a temporary
`condaenv.*.requirements.txt` beside the copy and runs `pip install -U -r <it> --exists-action=b` there
(conda/env/installers/pip.py). A relative path in the pip section is therefore relative to `.snakemake/conda`.
Then a `<env>.post-deploy.sh` beside the env file is copied to `<envs dir>/<hash>_.post-deploy.sh` and run from that
copy, as `source <conda>/bin/activate <prefix>; <shebang interpreter> <copy>`, in Snakemake's working directory.
So the envs install this project in their post-deploy scripts, found from the working directory.

Fast tests: every env file (the CPU and the GPU ones) parses, its pip lines are ones pip accepts in a requirements
file, with no path in them, pins agree with requirements.txt, every env has a post-deploy script that is valid bash
and, run from a copy as Snakemake runs it, finds the project (with a stand-in `python`), and the env paths the slow
test expects are the ones Snakemake's own `Env` computes. Slow test: for each CPU env (data, eval, train-cpu), the
real Snakemake deploys it in a copy of the project, with a stand-in `conda` that does what conda does for such a
file, minus the conda packages (a venv of this same Python 3.11, then conda's pip step), and then runs a job in the
env that imports the project and runs one of its CLIs. The GPU envs (train-gpu: CUDA torch and flash-attn;
serve-vllm: vLLM with its CUDA torch) cannot be installed here; the fast tests are all they get.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
CPU_ENVS = ["data", "eval", "train-cpu"]
GPU_ENVS = ["serve-vllm", "train-gpu"]
# Options pip accepts on a line of their own in a requirements file and that point at no path. Per-requirement
# options (`pkg --no-deps`) and editable or local paths are refused: conda runs pip in .snakemake/conda.
ALLOWED_OPTIONS = {"--index-url", "-i", "--extra-index-url", "--pre", "--prefer-binary", "--only-binary",
                   "--no-binary", "--trusted-host"}


def _env_file(name: str) -> Path:
    return ENVS / f"{name}.yaml"


def _post_deploy(env_file: Path) -> Path:
    # Snakemake: self.file.replace_suffix([".yaml", ".yml"], ".post-deploy.sh")
    return env_file.with_name(env_file.name.removesuffix(".yaml") + ".post-deploy.sh")


def _spec(env_file: Path) -> dict:
    return yaml.safe_load(env_file.read_text())


def _pip_lines(spec: dict) -> list[str]:
    sections = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    assert len(sections) == 1, f"one pip section expected, got {len(sections)}"
    return sections[0]


def snakemake_env_address(env_file: Path, envs_dir: Path) -> Path:
    """Where `snakemake --sdm conda` deploys env_file (Snakemake 9.27.1, conda.py `Env._get_hash` and
    `Env.address`): the md5 of the real path of the envs dir, the post-deploy script's bytes (when there is one),
    the pin file's (none here) and the env file's; a new env gets the full hash plus `_`. The env file is copied
    to `<address>.yaml`, the post-deploy script to `<address>.post-deploy.sh`."""
    md5 = hashlib.md5(usedforsecurity=False)
    md5.update(os.path.realpath(envs_dir).encode())
    if _post_deploy(env_file).exists():
        md5.update(_post_deploy(env_file).read_bytes())
    md5.update(env_file.read_bytes())
    return envs_dir / (md5.hexdigest() + "_")


def _requirements_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            pins[req.name.lower()] = str(req.specifier)
    return pins


def test_every_env_is_covered():
    assert sorted(p.name.removesuffix(".yaml") for p in ENVS.glob("*.yaml")) == sorted(CPU_ENVS + GPU_ENVS)
    orphans = [p.name for p in ENVS.glob("*.post-deploy.sh")
               if not p.with_name(p.name.removesuffix(".post-deploy.sh") + ".yaml").exists()]
    assert not orphans, f"post-deploy scripts without an env file: {orphans}"


@pytest.mark.parametrize("name", CPU_ENVS + GPU_ENVS)
def test_env_file_is_valid(name):
    spec = _spec(_env_file(name))
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    conda_deps = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda_deps and "pip" in conda_deps, conda_deps
    lines = _pip_lines(spec)
    assert lines and all(isinstance(line, str) for line in lines), lines
    for line in lines:
        assert ".." not in line and "/" not in line and not line.startswith("."), \
            f"{name}: {line!r}: a path in the pip section is resolved in .snakemake/conda, not in envs/"
        if line.startswith("-"):
            option = line.split()[0].split("=", 1)[0]
            assert option in ALLOWED_OPTIONS, f"{name}: {line!r}: not an option line this env may use"
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            pytest.fail(f"{name}: {line!r} is not a requirement pip accepts in a requirements file: {e}")
        assert req.url is None, f"{name}: {line!r}: a URL or path requirement"


@pytest.mark.parametrize("name", CPU_ENVS + ["train-gpu"])
def test_pins_match_requirements(name):
    pins = _requirements_pins()
    for line in _pip_lines(_spec(_env_file(name))):
        req = Requirement(line)
        if req.specifier and req.name.lower() in pins:
            assert str(req.specifier) == pins[req.name.lower()], f"{name}: {line} but requirements.txt pins " \
                                                                 f"{req.name}{pins[req.name.lower()]}"


def test_vllm_env_brings_its_own_torch():
    reqs = {Requirement(line).name.lower(): Requirement(line) for line in _pip_lines(_spec(_env_file("serve-vllm")))}
    assert str(reqs["vllm"].specifier).startswith("=="), "pin vLLM: it pins torch and transformers itself"
    # vLLM pins torch exactly and bounds transformers: a pin here would fight it.
    assert "torch" not in reqs and "transformers" not in reqs, sorted(reqs)


@pytest.mark.parametrize("name", CPU_ENVS + GPU_ENVS)
def test_post_deploy_script(name):
    script = _post_deploy(_env_file(name))
    assert script.exists(), f"{script.name} missing: it installs the project into the env"
    text = script.read_text()
    # Snakemake runs the script with the interpreter of its shebang (sh without one).
    assert text.startswith("#!/usr/bin/env bash\n"), text.splitlines()[0]
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "set -euo pipefail" in code
    # It runs as a copy in .snakemake/conda: its own path says nothing about where the project is.
    assert "$0" not in code and "BASH_SOURCE" not in code and "dirname" not in code
    assert 'python -m pip install --no-deps -e "$src"' in code and "${AGENTTUNE_SRC:-$PWD}" in code


@pytest.mark.parametrize("name", CPU_ENVS + GPU_ENVS)
def test_post_deploy_finds_the_project(tmp_path, name):
    """Each script, run as Snakemake runs it (a copy in .snakemake/conda, `/usr/bin/env bash <copy>`, the env's
    bin first on PATH; here a `python` that only records its arguments), installs the project from the working
    directory or $AGENTTUNE_SRC, and stops, naming both, anywhere else."""
    copy = tmp_path / ".snakemake" / "conda" / "0123abcd_.post-deploy.sh"
    copy.parent.mkdir(parents=True)
    shutil.copy(_post_deploy(_env_file(name)), copy)
    bin_dir, log = tmp_path / "env" / "bin", tmp_path / "python.log"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {log}\n')
    (bin_dir / "python").chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = {k: v for k, v in os.environ.items() if k != "AGENTTUNE_SRC"}
    base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"
    install = f"-m pip install --no-deps -e {REPO}"

    def run(cwd, **extra):
        log.unlink(missing_ok=True)
        proc = subprocess.run(["/usr/bin/env", "bash", str(copy)], cwd=cwd, env={**base, **extra},
                              capture_output=True, text=True)
        return proc, (log.read_text() if log.exists() else "")

    proc, calls = run(elsewhere)
    assert proc.returncode != 0 and "AGENTTUNE_SRC" in proc.stderr and "pip install" not in calls, proc.stderr
    for cwd, extra in ((REPO, {}), (elsewhere, {"AGENTTUNE_SRC": str(REPO)})):
        proc, calls = run(cwd, **extra)
        assert proc.returncode == 0, proc.stderr
        assert install in calls.splitlines(), calls


@pytest.mark.parametrize("name", CPU_ENVS + GPU_ENVS)
def test_address_reproduces_snakemake(tmp_path, name):
    """snakemake_env_address (used by the slow test) agrees with Snakemake's own Env, and Snakemake finds the
    post-deploy script."""
    from snakemake.deployment.conda import Env

    class Sources:
        def open(self, f, mode="r"):
            return open(f.get_path_or_uri(secret_free=False), mode)

        def exists(self, f):
            return os.path.exists(f.get_path_or_uri(secret_free=False))

    envs_dir = tmp_path / ".snakemake" / "conda"
    envs_dir.mkdir(parents=True)
    workflow = SimpleNamespace(sourcecache=Sources(), deployment_settings=SimpleNamespace(apptainer_args=""),
                               runtime_paths=[], persistence=SimpleNamespace(conda_env_path=str(envs_dir)))
    env = Env(workflow, env_file=str(_env_file(name)), envs_dir=str(envs_dir))
    env._conda = SimpleNamespace(platform="linux-64")  # only the pin file's name needs it; no conda here
    assert Path(env.address) == snakemake_env_address(_env_file(name), envs_dir)
    assert Path(env.post_deploy_file.get_path_or_uri(secret_free=False)) == _post_deploy(_env_file(name))


# --- slow: deploy the CPU envs with the real Snakemake and a stand-in conda -------------------------------------

# `conda` for Snakemake's checks (`--version`, `info --json`, `config --get channel_priority --json`), its
# `conda clean -y --tarballs` and `conda env create --file F --prefix P`: a venv of this Python (the env's python=3.11),
# then conda's pip step (conda/env/installers/pip.py): the pip list into a temporary requirements file beside F,
# `pip install -U -r` in F's folder. Conda packages other than python and pip are not supported (these envs have
# none).
FAKE_CONDA = '''#!{python}
import argparse, json, os, subprocess, sys, tempfile
import yaml

ROOT = {root!r}
args = sys.argv[1:]
if args == ["--version"]:
    print("conda 24.11.3")
elif args[:2] == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": ROOT, "platform": "linux-64"}}))
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}, "rc_path": "", "success": True, "warnings": []}}))
elif args[:1] == ["clean"]:
    pass  # `conda clean -y --tarballs` after each env: no package tarballs here
elif args[:2] == ["env", "create"]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", required=True)
    parser.add_argument("--prefix", required=True)
    opts, _ = parser.parse_known_args(args[2:])
    spec = yaml.safe_load(open(opts.file))
    conda_deps = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip_specs = [s for d in spec["dependencies"] if isinstance(d, dict) for s in d["pip"]]
    python = "python=%d.%d" % sys.version_info[:2]
    if sorted(conda_deps) != sorted([python, "pip"]):
        sys.exit("fake conda: only [%s, pip] as conda packages, got %s" % (python, conda_deps))
    subprocess.run([sys.executable, "-m", "venv", opts.prefix], check=True)
    pip_workdir = os.path.dirname(os.path.abspath(opts.file))
    with tempfile.NamedTemporaryFile("w", prefix="condaenv.", suffix=".requirements.txt", dir=pip_workdir,
                                     delete=False) as req:
        req.write("\\n".join(pip_specs))
    try:
        subprocess.run([os.path.join(opts.prefix, "bin", "python"), "-m", "pip", "install", "-U", "-r", req.name,
                        "--exists-action=b"], cwd=pip_workdir, check=True)
    finally:
        os.remove(req.name)
else:
    sys.exit("fake conda: unsupported: %s" % args)
'''
# `source <conda>/bin/activate <prefix>`: the env's bin first on PATH, as conda's activation does.
FAKE_ACTIVATE = 'export CONDA_PREFIX="$1" CONDA_DEFAULT_ENV="$1" VIRTUAL_ENV="$1"\nexport PATH="$1/bin:$PATH"\n'

# What a job in each env checks (from `/`, with `python -I`, so that the copy's folder is not on sys.path): the
# project is installed (its metadata, imported from the copy), the env's own packages import, one CLI runs.
CHECKS = {
    "data": ("import torch, transformers, datasets, pyarrow, gguf, accelerate, agenttune.tokenize.shards",
             "-m agenttune.cluster.cost --help"),
    "eval": ("import torch, transformers, rouge_score, sacrebleu, matplotlib, agenttune.evaluate.score",
             "-m agenttune.evaluate.serve --help"),
    "train-cpu": ("import torch, transformers, accelerate, deepspeed, agenttune.train.base_model as b; "
                  "print(len(b.load_smollm2_tokenizer()))",
                  "-m agenttune.train.deepspeed --help"),
}


def _project_copy(root: Path, name: str) -> Path:
    project = root / "project"
    shutil.copytree(REPO / "agenttune", project / "agenttune", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md", "config/schema.yaml"):  # the package reads config/schema.yaml
        (project / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, project / f)
    (project / "envs").mkdir()
    for f in (_env_file(name), _post_deploy(_env_file(name))):
        shutil.copy(f, project / "envs" / f.name)
    imports, cli = CHECKS[name]
    check = (f"import importlib.metadata as m, agenttune; print('agenttune', m.version('agenttune'), "
             f"agenttune.__path__[0]); {imports}")
    (project / "Snakefile").write_text(textwrap.dedent(f'''\
        rule check:
            output:
                "check.txt",
            conda:
                "envs/{name}.yaml"
            shell:
                "out=$PWD/{{output}}; cd / && python -I -c \\"{check}\\" > $out && python -I {cli} >> $out"
        '''))
    return project


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_ENVS)
def test_cpu_env_deploys_with_snakemake(tmp_path, name):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the envs ask for python=3.11; the stand-in conda makes venvs of the test's own Python")
    project = _project_copy(tmp_path, name)
    conda_root = tmp_path / "conda"
    (conda_root / "bin").mkdir(parents=True)
    (conda_root / "bin" / "conda").write_text(FAKE_CONDA.format(python=sys.executable, root=str(conda_root)))
    (conda_root / "bin" / "conda").chmod(0o755)
    (conda_root / "bin" / "activate").write_text(FAKE_ACTIVATE)
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTTUNE_SRC", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(conda_root / "bin"), str(Path(sys.executable).parent), env["PATH"]])
    # One pip cache for all three installs (torch's CPU wheel, deepspeed's built wheel), as install.sh uses.
    env.setdefault("PIP_CACHE_DIR", str(REPO / ".cache" / "pip"))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    envs_dir = project / ".snakemake" / "conda"
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--sdm", "conda", "--cores", "1"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        # Where Snakemake put the copies, and that the post-deploy script ran from its copy.
        address = snakemake_env_address(project / "envs" / f"{name}.yaml", envs_dir)
        assert address.is_dir() and address.with_name(address.name + ".yaml").is_file(), sorted(envs_dir.iterdir())
        assert address.with_name(address.name + ".post-deploy.sh").is_file()
        assert f"Running post-deploy script .snakemake/conda/{address.name}.post-deploy.sh" in out, out[-6000:]
        report = (project / "check.txt").read_text()
        assert f"agenttune 0.1.0 {project / 'agenttune'}" in report, report
        assert "usage: python -m agenttune." in report, report
    finally:
        shutil.rmtree(envs_dir, ignore_errors=True)  # a few GB per env
