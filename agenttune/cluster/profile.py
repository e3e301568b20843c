"""The project's Slurm profile as the user's Snakemake profile `slurm`, so that `snakemake --profile slurm` works.

Takes: the checkout this package is installed from (its `profiles/slurm/config.yaml`), and the folders Snakemake
searches for a profile given by name. Snakemake 9 (snakemake/cli.py, `get_profile_dir`) resolves `--profile NAME`
as a path when NAME exists relative to the working directory, else it looks for a folder NAME holding
`profile.yaml` or `config.yaml` (or `profile.v9+.yaml` ...) in the working directory, then in the user folder
`$XDG_CONFIG_HOME/snakemake` (default `~/.config/snakemake`), then in the site folder (the first entry of
`$XDG_CONFIG_DIRS`, default `/etc/xdg`, + `/snakemake`): platformdirs' AppDirs("snakemake", "snakemake").
Gives: `install`, which writes `<user folder>/slurm/config.yaml`: a small YTE profile that holds no setting of its
own and renders this checkout's `profiles/slurm/config.yaml` afresh on every run (so an updated checkout updates
it, and the site file is read and checked as before). It never replaces a profile that is there: an existing
`slurm` profile in the user or site folder (or a `slurm` in the working directory, which Snakemake would pick
first) is left untouched, and install says where it is and what to add to it. `show` says where
`snakemake --profile slurm` resolves from here.

CLI: `python -m agenttune.cluster.profile install [--name slurm]`, `python -m agenttune.cluster.profile show`.
docs/slurm.md explains the choice.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PROFILE = Path("profiles") / "slurm" / "config.yaml"
DEFAULT_NAME = "slurm"
# The profile file names Snakemake 9 accepts in a profile folder (snakemake/cli.py, get_profile_dir).
_PROFILE_FILE = re.compile(r"(?:profile|config)(?:\.v(\d+)\+)?\.yaml")
SNAKEMAKE_MAJOR = 9


# platformdirs takes an XDG variable only when it holds an absolute path (and the first of $XDG_CONFIG_DIRS).
def _xdg_home(env) -> Path:
    value = env.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(value):
        return Path(value)
    home = env.get("HOME", "")
    return Path(home if os.path.isabs(home) else os.path.expanduser("~")) / ".config"


def _xdg_site(env) -> Path:
    return Path(next((p for p in env.get("XDG_CONFIG_DIRS", "").split(os.pathsep) if os.path.isabs(p)), "/etc/xdg"))


def snakemake_dirs(env=None) -> tuple[Path, Path]:
    """(user, site) profile folders, as Snakemake computes them (platformdirs AppDirs("snakemake", "snakemake");
    the same XDG rules when platformdirs is missing)."""
    env = os.environ if env is None else env
    if env is os.environ:
        try:
            from platformdirs import AppDirs
        except ImportError:
            pass
        else:
            dirs = AppDirs("snakemake", "snakemake")
            return Path(dirs.user_config_dir), Path(dirs.site_config_dir)
    return _xdg_home(env) / "snakemake", _xdg_site(env) / "snakemake"


def profile_file(folder: Path) -> Path | None:
    """The file Snakemake would read in a profile folder (the newest `.vN+` it accepts), or None."""
    if folder.is_file():
        return folder
    if not folder.is_dir():
        return None
    found = {}
    for f in folder.iterdir():
        m = _PROFILE_FILE.fullmatch(f.name)
        if m and int(m.group(1) or 0) <= SNAKEMAKE_MAJOR:
            found[f] = int(m.group(1) or 0)
    return max(found, key=found.get) if found else None


def resolve(name: str = DEFAULT_NAME, cwd: Path | None = None, env=None) -> tuple[Path | None, list[Path]]:
    """(the profile file `snakemake --profile NAME` reads when run in cwd or None, the places searched in order)."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    user, site = snakemake_dirs(env)
    given = cwd / name
    if given.exists():
        places = [given.parent]
        name = given.name
    else:
        places = [cwd, user, site]
    for place in places:
        found = profile_file(place / name)
        if found is not None:
            return found, places
    return None, places


def profile_text(root: Path, folder: Path) -> str:
    """The installed config.yaml: no settings of its own; every run renders root/profiles/slurm/config.yaml."""
    return f"""\
# Snakemake profile `{folder.name}`, installed by `python -m agenttune.cluster.profile install` from {root}.
# It holds no setting of its own: each run renders {root / PROJECT_PROFILE} afresh
# (executor settings, and the resources of the site file, checked against the cluster), so updating that checkout
# updates this profile. Use it from the project root: `snakemake --profile {folder.name} ...`. Settings you add
# below the `<:` line override the project's, key by key (docs/slurm.md). To remove it: rm -r {folder}
__use_yte__: true
__definitions__:
  - from agenttune.cluster.profile import project_profile
  - agenttune = project_profile({str(root)!r}, {str(folder)!r})
<: ?agenttune
"""


def project_profile(root: str, installed_at: str = "") -> dict:
    """What the installed profile renders to: root's profiles/slurm/config.yaml, rendered now (YTE, as Snakemake
    renders a profile). Exits with a message when the checkout is gone."""
    path = Path(root) / PROJECT_PROFILE
    if not path.is_file():
        print(f"agenttune.cluster.profile: the Snakemake profile {installed_at or ''} delegates to {path}, which "
              "does not exist (the checkout moved or was removed). Remove that profile folder and run "
              "`python -m agenttune.cluster.profile install` in your checkout.", file=sys.stderr)
        raise SystemExit(1)
    here = Path.cwd().resolve()
    if (here / "Snakefile").is_file() and here != Path(root).resolve():
        print(f"agenttune.cluster.profile: note: this profile is the one of {root}; you run in {here}",
              file=sys.stderr)
    import yte  # Snakemake's template engine; present wherever a Snakemake profile is read

    with path.open(encoding="utf-8") as f:
        return yte.process_yaml(f, require_use_yte=True)


def _merge_advice(existing: Path, root: Path, folder: Path) -> str:
    block = profile_text(root, folder).split("__use_yte__", 1)[1]
    return (f"To use agenttune's Slurm settings with it, add these lines at the top of {existing} (keys you set "
            f"below them win, as a whole: a `default-resources` or `set-resources` of yours replaces the "
            f"project's, so put account and partitions in the site file, config/site.yaml, instead):\n\n"
            f"__use_yte__{block}\n"
            f"Or install it under another name and give both: "
            f"`python -m agenttune.cluster.profile install --name agenttune-slurm`, then "
            f"`snakemake --profile {folder.name} --profile agenttune-slurm` (the later profile wins key by key).")


def install(name: str = DEFAULT_NAME, root: Path = ROOT, cwd: Path | None = None, env=None,
            out=sys.stdout, err=sys.stderr) -> int:
    """Write <user profile folder>/<name>/config.yaml unless a profile of that name is there (or would shadow it,
    or be shadowed). 0: installed, or this very profile was already there; 1: refused, nothing written."""
    root = Path(root).resolve()
    if not (root / PROJECT_PROFILE).is_file():
        print(f"agenttune.cluster.profile: {root / PROJECT_PROFILE} not found: install from a checkout "
              "(pip install -e .)", file=err)
        return 1
    cwd = Path.cwd() if cwd is None else Path(cwd)
    user, site = snakemake_dirs(env)
    folder = user / name
    text = profile_text(root, folder)
    target = folder / "config.yaml"
    if target.is_file() and not (set(folder.iterdir()) - {target}) and target.read_text(encoding="utf-8") == text:
        print(f"the Snakemake profile `{name}` is already installed ({target}); nothing changed", file=out)
        return 0
    blockers = []
    if folder.exists() or folder.is_symlink():
        blockers.append((folder, "you already have a Snakemake profile of this name; it is left as it is"))
    site_folder = site / name
    if site_folder.exists():
        blockers.append((site_folder, "your site provides a profile of this name; a user profile would hide it "
                                      "from every workflow you run, so nothing was installed"))
    local = cwd / name
    if local.exists():
        blockers.append((local, "Snakemake would take this one first when you run from here, so a user profile "
                                "would not be used; nothing was installed"))
    if blockers:
        for path, why in blockers:
            print(f"agenttune.cluster.profile: `--profile {name}`: {path}: {why}.", file=err)
        existing = profile_file(blockers[0][0]) or blockers[0][0]
        print(_merge_advice(existing, root, folder), file=err)
        return 1
    folder.mkdir(parents=True)
    tmp = folder / ".config.yaml.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    print(f"installed the Snakemake profile `{name}`: {target}\n"
          f"  it renders {root / PROJECT_PROFILE} on every run (updates of the checkout apply)\n"
          f"  from {root}: snakemake --profile {name} [--configfile config/agenttune-7b.yaml]\n"
          f"  the cluster's values come from the site file (config/site.yaml or $AGENTTUNE_SLURM_SITE; "
          "docs/slurm.md)", file=out)
    return 0


def show(name: str = DEFAULT_NAME, cwd: Path | None = None, env=None, out=sys.stdout) -> int:
    found, places = resolve(name, cwd, env)
    env = os.environ if env is None else env
    print(f"`snakemake --profile {name}` looks in: " + ", ".join(str(p) for p in places), file=out)
    print(f"it reads: {found}" if found else "it finds none: run `python -m agenttune.cluster.profile install`",
          file=out)
    if env.get("SNAKEMAKE_PROFILE"):
        print(f"$SNAKEMAKE_PROFILE={env['SNAKEMAKE_PROFILE']} applies only when no --profile is given", file=out)
    return 0 if found else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agenttune.cluster.profile", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd, help_ in (("install", "install the project's Slurm profile as your Snakemake profile NAME; never "
                                   "replaces one that is there"),
                       ("show", "where `snakemake --profile NAME` resolves from the working directory")):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("--name", default=DEFAULT_NAME, help=f"profile name (default: {DEFAULT_NAME})")
    args = parser.parse_args(argv)
    if args.cmd == "install":
        return install(args.name)
    return show(args.name)


if __name__ == "__main__":
    sys.exit(main())
