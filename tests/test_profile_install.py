"""`python -m agenttune.cluster.profile install`: the project's Slurm profile as the user's Snakemake profile `slurm`.

Each test runs with a temporary HOME / XDG_CONFIG_HOME / XDG_CONFIG_DIRS, so nothing of the user's is read or
written. Checked: the folders agree with Snakemake's own lookup (platformdirs, snakemake.cli.get_profile_dir); the
install writes one small file that renders the checkout's profiles/slurm/config.yaml afresh (no stale copy); a
second install changes nothing; an existing profile of the user's or the site's is refused and left untouched;
`snakemake --profile slurm -n` from the project root finds the installed profile (AGENTTUNE_SLURM_CHECK=0: no live
cluster); and the workflow profile profiles/default overrides a user profile key by key. Seconds.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agenttune.cluster import profile

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
NOT_FOUND = "profile directory given (slurm), but no profile.yaml (or config.yaml) found"


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CONFIG_HOME", "SNAKEMAKE_PROFILE", "AGENTTUNE_SLURM_SITE")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_DIRS=str(tmp_path / "xdg-site"), AGENTTUNE_SLURM_CHECK="0")
    env.update(extra)
    return env


def run_install(env, *args):
    return subprocess.run([sys.executable, "-m", "agenttune.cluster.profile", "install", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def dry_run(env, run="pytest-profile"):
    return subprocess.run([SNAKEMAKE, "--profile", "slurm", "-n", "--configfile", "config/test/config.yaml",
                           "--config", f"run={run}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("variables", [{}, {"XDG_CONFIG_HOME": "/tmp/xdg-home", "XDG_CONFIG_DIRS": "/opt/a:/opt/b"},
                                       {"XDG_CONFIG_HOME": "relative/ignored", "XDG_CONFIG_DIRS": "rel:/opt/c"},
                                       {"HOME": "/home/someone"}])
def test_profile_folders_are_snakemakes(monkeypatch, variables):
    for name in ("XDG_CONFIG_HOME", "XDG_CONFIG_DIRS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    from platformdirs import AppDirs

    dirs = AppDirs("snakemake", "snakemake")
    expected = (Path(dirs.user_config_dir), Path(dirs.site_config_dir))
    assert profile.snakemake_dirs() == expected  # platformdirs, as Snakemake calls it
    assert profile.snakemake_dirs(dict(os.environ)) == expected  # the same rules without platformdirs


def test_lookup_order_is_snakemakes(tmp_path, monkeypatch):
    """profile.resolve finds what snakemake.cli.get_profile_dir finds: working directory, user folder, site."""
    from snakemake.cli import get_profile_dir

    cwd, user, site = tmp_path / "project", tmp_path / "user", tmp_path / "site"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(site))
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for folder in (site / "snakemake" / "slurm", user / "snakemake" / "slurm", cwd / "slurm"):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("jobs: 1\n")
        ours, places = profile.resolve("slurm")
        # a NAME that exists relative to the working directory is taken as a path there
        assert places == ([cwd] if folder == cwd / "slurm" else [cwd, user / "snakemake", site / "snakemake"])
        assert ours == folder / "config.yaml" == get_profile_dir("slurm")[1].absolute()
    (cwd / "slurm" / "profile.v9+.yaml").write_text("jobs: 2\n")
    (cwd / "slurm" / "profile.v99+.yaml").write_text("jobs: 3\n")
    assert profile.resolve("slurm")[0] == cwd / "slurm" / "profile.v9+.yaml" == get_profile_dir("slurm")[1].absolute()


def test_install_renders_the_checkout_each_time(tmp_path):
    """The installed file holds no setting: it renders <checkout>/profiles/slurm/config.yaml when read, so an updated
    checkout is what the next run sees; a removed checkout stops with a message."""
    import yte

    root = tmp_path / "checkout"
    (root / "profiles" / "slurm").mkdir(parents=True)
    project = root / "profiles" / "slurm" / "config.yaml"
    project.write_text("__use_yte__: true\nexecutor: slurm\njobs: ?3 + 4\n")
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_DIRS": str(tmp_path / "site")}
    assert profile.install(root=root, cwd=tmp_path, env=env) == 0
    installed = tmp_path / "home" / ".config" / "snakemake" / "slurm" / "config.yaml"
    assert [p.name for p in installed.parent.iterdir()] == ["config.yaml"]
    assert str(root) in installed.read_text() and "jobs" not in installed.read_text()

    def render():
        with installed.open() as f:
            return yte.process_yaml(f, require_use_yte=True)

    assert render() == {"executor": "slurm", "jobs": 7}
    project.write_text("executor: slurm\njobs: 9\nlatency-wait: 5\n")
    assert render() == {"executor": "slurm", "jobs": 9, "latency-wait": 5}
    project.unlink()
    with pytest.raises(SystemExit):  # after printing what to do (YTE passes a SystemExit on)
        render()


def test_install_refuses_twice_and_snakemake_finds_it(tmp_path):
    env = clean_env(tmp_path)
    before = dry_run(env)
    assert before.returncode != 0 and NOT_FOUND in before.stderr, before.stderr[-2000:]

    first = run_install(env)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "home" / ".config" / "snakemake" / "slurm"
    installed = folder / "config.yaml"
    assert installed.is_file() and f"installed the Snakemake profile `slurm`: {installed}" in first.stdout
    assert str(REPO / "profiles" / "slurm" / "config.yaml") in installed.read_text()
    state = snapshot(folder)

    second = run_install(env)
    assert second.returncode == 0 and "already installed" in second.stdout and "nothing changed" in second.stdout
    assert snapshot(folder) == state

    proc = dry_run(env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    # the user profile by name, the workflow profile on top; the Slurm settings rendered from config/site.yaml
    assert "Using profiles slurm and workflow specific profile profiles/default" in proc.stderr
    assert "slurm_partition=cpu" in output and "train_epoch" in output
    show = subprocess.run([sys.executable, "-m", "agenttune.cluster.profile", "show"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and f"it reads: {installed}" in show.stdout
    assert snapshot(folder) == state


def test_install_under_xdg_config_home(tmp_path):
    env = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    assert run_install(env).returncode == 0
    assert (tmp_path / "xdg" / "snakemake" / "slurm" / "config.yaml").is_file()
    assert not (tmp_path / "home").exists()
    proc = dry_run(env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.parametrize("where", ["user", "site", "other checkout"])
def test_an_existing_profile_is_left_alone(tmp_path, monkeypatch, where):
    env = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "snakemake" / "slurm"
    folder = {"user": user, "other checkout": user, "site": tmp_path / "xdg-site" / "snakemake" / "slurm"}[where]
    folder.mkdir(parents=True)
    mine = "executor: slurm\njobs: 500\ndefault-resources:\n  slurm_account: lab\n"
    if where == "other checkout":
        mine = profile.profile_text(tmp_path / "elsewhere", user)
    (folder / "config.yaml").write_text(mine)
    state = snapshot(tmp_path)

    proc = run_install(env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"`--profile slurm`: {folder}:" in proc.stderr
    # what to do instead: the lines to add (which render this checkout's profile), or a second profile name
    assert f"add these lines at the top of {folder / 'config.yaml'}" in proc.stderr
    assert f"project_profile({str(REPO)!r}" in proc.stderr and "<: ?agenttune" in proc.stderr
    assert "--name agenttune-slurm" in proc.stderr
    assert snapshot(tmp_path) == state, "a refused install touched files"

    if where == "user":
        # What the message proposes works: the user's profile with the lines added on top, their keys below win.
        block = proc.stderr.split("instead):\n\n", 1)[1].split("\nOr install it under another name", 1)[0]
        (folder / "config.yaml").write_text(block + "jobs: 500\n")
        out = dry_run(env)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        assert "slurm_partition=cpu" in out.stdout + out.stderr
        import yte

        monkeypatch.setenv("AGENTTUNE_SLURM_CHECK", "0")
        monkeypatch.delenv("AGENTTUNE_SLURM_SITE", raising=False)
        monkeypatch.chdir(REPO)
        with (folder / "config.yaml").open() as f:
            merged = yte.process_yaml(f, require_use_yte=True)
        assert merged["jobs"] == 500 and merged["executor"] == "slurm"


def test_workflow_profile_overrides_the_user_profile_key_by_key(tmp_path):
    """Snakemake 9 reads `--profile` files first and the workflow profile (profiles/default) last; configargparse
    keeps, per top-level key, the value of the last file that sets it; the command line beats both."""
    workflow, user = tmp_path / "wf", tmp_path / "xdg" / "snakemake" / "slurm"
    (workflow / "profiles" / "default").mkdir(parents=True)
    user.mkdir(parents=True)
    (workflow / "Snakefile").write_text('print("WHO", config["who"], "ALSO", config.get("also"))\n\n'
                                        "rule all:\n    output: 'x'\n    shell: 'touch x'\n")
    (workflow / "profiles" / "default" / "config.yaml").write_text("config:\n  who: workflow\n")
    (user / "config.yaml").write_text("config:\n  who: user\n  also: user\ndefault-resources:\n  mem_mb: 111\n")
    env = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.run([SNAKEMAKE, "--profile", "slurm", "-n"], cwd=workflow, env=env, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    # `config` is set by both: the workflow profile's whole mapping wins (the user's `also` is gone);
    # `default-resources` only by the user profile: it passes through.
    assert "WHO workflow ALSO None" in out and "mem_mb=111" in out
    proc = subprocess.run([SNAKEMAKE, "--profile", "slurm", "-n", "--config", "who=cli"], cwd=workflow, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "WHO cli" in proc.stdout + proc.stderr


def test_shipped_profiles_keep_the_split():
    """profiles/default is read on every run, after --profile slurm, and replaces a key of the Slurm profile as a
    whole: where both set a key, they agree."""
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())  # unrendered: its own keys
    differing = {k for k in set(default) & set(slurm) if default[k] != slurm[k]}
    assert not differing, f"profiles/default overrides the Slurm profile's {sorted(differing)}"
