"""Step checkpoints inside an epoch, so that a killed, preempted or timed-out epoch job resumes where it was.

Takes: the `train.step_checkpoints` config (`every_steps`, `every_minutes`, `keep`), the job's identity (the
training part of the train config, seed, epoch, world size, shards, base model, previous epoch).
Gives: `<run>/checkpoints/epoch-<e>.steps/step-<k>/`, beside the epoch folder and never inside it (the epoch folder
is the rule's `directory()` output, which Snakemake deletes before a retry). Each step folder is a complete HF
Trainer checkpoint (weights, optimizer, scheduler, every rank's RNG state, trainer_state.json; under ZeRO-3 every
rank's shards) plus `step_checkpoint.json`, the completion marker, which records the job's fingerprint and the size
of every file.

How a step checkpoint is written (`publish`, on every rank): the Trainer saves into `epoch-<e>.partial/checkpoint-<k>`
(the job's scratch folder, removed when a job starts); each rank fsyncs the files it wrote; after a barrier rank 0
writes the marker (fsynced), renames the folder to `epoch-<e>.steps/step-<k>` (same filesystem: atomic), fsyncs the
folder above, and only then deletes the step checkpoints older than the newest `keep`. A step folder is therefore
visible only when complete, and at most `keep` + 1 exist (while a new one is written).

How a job resumes (`choose_resume`): every rank lists `epoch-<e>.steps/`; a folder without a valid marker, or whose
files do not match the sizes the marker records, is ignored and removed (rank 0, with a log line). The newest
complete one must carry this job's fingerprint; any difference is an error naming the folder and the field, never
a silent resume. The ranks then check that they all chose the same step.

When the epoch completes (its folder renamed into place), rank 0 removes `epoch-<e>.steps/`: the epoch folder is
the only thing the next epoch reads.

`step_checkpoint_problems` is for the Slurm preflight: it names an interval that cannot save anything before the
partition's time limit.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path

from agenttune.common.config import section_with_defaults
from agenttune.common.manifest import config_hash, sha256_file

STEPS_SUFFIX = ".steps"
MARKER = "step_checkpoint.json"
KIND = "agenttune step checkpoint"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")

# Train keys that change how a job is run or kept, not what it computes: a resume may differ in these. The world
# size, which is what launcher/nodes/nproc_per_node decide for the numbers, is part of the fingerprint on its own.
NEUTRAL_KEYS = ("step_checkpoints", "retries", "launcher", "nodes", "nproc_per_node", "master_port")

# Test hooks (tests/test_midepoch.py), read only by a job that did not resume from a step checkpoint, so that its
# retry runs through: stall every rank after the optimizer step N, or rank 0 in the middle of writing step
# checkpoint N (files written, marker not yet), so that a test can SIGKILL the job exactly there; or SIGKILL every
# rank itself after step N (a node failure, for a whole Snakemake run with retries).
TEST_STALL_AFTER_STEP = "AGENTTUNE_TEST_STALL_AFTER_STEP"
TEST_STALL_IN_SAVE = "AGENTTUNE_TEST_STALL_IN_STEP_SAVE"
TEST_KILL_AFTER_STEP = "AGENTTUNE_TEST_KILL_AFTER_STEP"


def steps_dir(out_dir: str | Path) -> Path:
    """Where the step checkpoints of the job writing `out_dir` live: `<out_dir>.steps/`, beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + STEPS_SUFFIX)


def enabled(cfg: dict) -> bool:
    sc = section_with_defaults(cfg.get("step_checkpoints"), "train", "step_checkpoints")
    return sc["every_steps"] is not None or sc["every_minutes"] is not None


def training_config(cfg: dict) -> dict:
    """The part of the train config that decides what an epoch computes."""
    return {k: v for k, v in sorted(cfg.items()) if k not in NEUTRAL_KEYS}


# --------------------------------------------------------------------------- fingerprint

def _previous_epoch_identity(folder: Path) -> dict:
    """The previous epoch by the sha256 of its weights (from its manifest; no re-hashing of big files)."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        outputs = json.loads(manifest.read_text()).get("outputs")
        if outputs:
            return {"folder": folder.name, "weights_sha256": outputs}
    return {"folder": folder.name, "trainer_state_sha256": sha256_file(folder / "trainer_state.json")}


def _base_model_identity(folder: Path) -> dict:
    """The base model by its config and the names and sizes of its weight files (hashing 145 GB of weights at every
    job start would cost minutes; the folder is a pipeline output that only its own rule rewrites)."""
    ident = {"config_sha256": sha256_file(folder / "config.json")}
    info = folder / "base_model_info.json"
    if info.is_file():
        ident["base_model_info_sha256"] = sha256_file(info)
    ident["weights"] = {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}
    return ident


def fingerprint(cfg: dict, seed: int, until_epoch: int, world_size: int, shard_paths, base_model_dir,
                resume_from, device: str, attn_implementation: str, precision: str) -> dict:
    """What a step checkpoint must agree on with the job that resumes it. Every field must be equal."""
    train = training_config(cfg)
    return {
        "epoch": int(until_epoch),
        "world_size": int(world_size),
        "seed": int(seed),
        "train_config_hash": config_hash(train),
        "train_config": train,
        "shards": {Path(p).name: sha256_file(p) for p in shard_paths},
        "base_model": _base_model_identity(Path(base_model_dir)),
        "start": "base model" if resume_from is None else _previous_epoch_identity(Path(resume_from)),
        "device": device,
        "attn_implementation": attn_implementation,
        "precision": precision,
    }


def fingerprint_difference(recorded: dict, current: dict) -> str | None:
    """The first field (dotted, train config keys by name) that differs, described; None when all agree."""
    for field in current:
        if field == "train_config_hash":
            continue
        theirs, ours = recorded.get(field, "<missing>"), current[field]
        if field == "train_config" and isinstance(theirs, dict):
            for key in sorted(set(theirs) | set(ours)):
                a, b = theirs.get(key, "<missing>"), ours.get(key, "<missing>")
                if a != b:
                    return f"train.{key}: {a!r} in the checkpoint, {b!r} in this job"
            continue
        if theirs != ours:
            if isinstance(theirs, dict) and isinstance(ours, dict):
                for key in sorted(set(theirs) | set(ours)):
                    a, b = theirs.get(key, "<missing>"), ours.get(key, "<missing>")
                    if a != b:
                        return f"{field}.{key}: {a!r} in the checkpoint, {b!r} in this job"
            return f"{field}: {theirs!r} in the checkpoint, {ours!r} in this job"
    return None


# --------------------------------------------------------------------------- reading

def _step_of(folder: Path) -> int | None:
    m = _STEP_DIR.match(folder.name)
    return int(m.group(1)) if m else None


def incomplete_reason(folder: Path) -> str | None:
    """Why `folder` is not a complete step checkpoint, or None when it is: its marker is there, names this step,
    and every file it lists is there with the size it records."""
    marker = folder / MARKER
    try:
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        return f"no {MARKER} (the job writing it was killed, or the folder was copied in part)"
    except (OSError, ValueError) as err:
        return f"unreadable {MARKER}: {err}"
    if record.get("kind") != KIND or record.get("format") != FORMAT:
        return f"{MARKER} is not a step checkpoint marker of format {FORMAT}"
    if record.get("step") != _step_of(folder):
        return f"{MARKER} says step {record.get('step')}, the folder is named {folder.name}"
    files = record.get("files") or {}
    if "trainer_state.json" not in files:
        return f"{MARKER} lists no trainer_state.json"
    for rel, size in files.items():
        path = folder / rel
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, the marker records {size}"
    return None


def scan(folder: str | Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """(complete step checkpoints as (step, path), oldest first; other entries as (path, why))."""
    folder = Path(folder)
    complete, other = [], []
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return [], []
    for entry in entries:
        step = _step_of(entry)
        if step is None or not entry.is_dir():
            other.append((entry, "not a step-<k> folder"))
            continue
        why = incomplete_reason(entry)
        if why is None:
            complete.append((step, entry))
        else:
            other.append((entry, why))
    complete.sort()
    return complete, other


def read_marker(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MARKER).read_text())


def choose_resume(folder: str | Path, current: dict, is_main: bool, log=print) -> tuple[int, Path] | None:
    """The newest complete step checkpoint in `folder` (`epoch-<e>.steps/`), checked against this job's fingerprint
    `current`; None when there is none. Rank 0 (`is_main`) removes incomplete entries, with a log line. A
    checkpoint with another fingerprint is an error naming the folder and the field."""
    folder = Path(folder)
    complete, other = scan(folder)
    if is_main:
        for path, why in other:
            if _step_of(path) is None:
                log(f"step checkpoints: ignoring {path}: {why}")
                continue
            log(f"step checkpoints: ignoring and removing the incomplete {path}: {why}")
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    if not complete:
        return None
    step, path = complete[-1]
    recorded = read_marker(path).get("fingerprint") or {}
    diff = fingerprint_difference(recorded, current)
    if diff is not None:
        raise ValueError(
            f"step checkpoint {path} was written by another job: {diff}. Resuming from it would not continue this "
            f"job's training. If that change is meant, delete {folder} (the epoch then starts again from its "
            "beginning); otherwise restore what changed (config, shards, base model, previous epoch, world size).")
    return step, path


# --------------------------------------------------------------------------- writing

def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic there
    finally:
        os.close(fd)


_RANK_NAME = re.compile(r"(?:rank_|rng_state_)(\d+)[_.]")


def fsync_own_files(folder: str | Path, rank: int) -> int:
    """fsync the files of a Trainer checkpoint that `rank` wrote: the ones naming its rank (ZeRO shards,
    `rng_state_<r>.pth`); rank 0 also those that name no rank. On a shared filesystem the node that wrote a file
    is the one whose fsync counts. Returns how many files it synced."""
    n = 0
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        m = _RANK_NAME.search(path.name)
        owner = int(m.group(1)) if m else 0
        if owner == rank:
            _fsync_file(path)
            n += 1
    if rank == 0:
        for sub in [Path(folder), *(p for p in Path(folder).rglob("*") if p.is_dir())]:
            fsync_dir(sub)
    return n


def write_marker(folder: Path, step: int, fp: dict, epoch_float: float | None) -> None:
    """The completion marker, written last: atomically (temp file, fsync, rename) and fsynced."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}
    record = {"kind": KIND, "format": FORMAT, "step": int(step), "epoch_progress": epoch_float,
              "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fp, "files": files}
    tmp = folder / (MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MARKER)
    fsync_dir(folder)


def _hook(name: str, step: int, resumed: bool) -> bool:
    """Whether test hook `name` (a comma-separated list of global steps) acts at `step` in this job."""
    value = os.environ.get(name, "")
    return not resumed and str(step) in value.split(",")


def publish(src: str | Path, dest_root: str | Path, step: int, fp: dict, keep: int, epoch_float: float | None,
            log=print, resumed: bool = False) -> Path:
    """Rank 0, after every rank has synced its files: mark `src` complete, rename it to `dest_root/step-<step>`,
    then delete all but the newest `keep` complete step checkpoints. Returns the new folder."""
    src, dest_root = Path(src), Path(dest_root)
    if _hook(TEST_STALL_IN_SAVE, step, resumed):
        log(f"test hook: stalling while writing step checkpoint {step} (files written, marker not yet)")
        time.sleep(3600)
    write_marker(src, step, fp, epoch_float)
    new_root = not dest_root.exists()
    dest_root.mkdir(parents=True, exist_ok=True)
    if new_root:
        fsync_dir(dest_root.parent)
    dest = dest_root / f"step-{step}"
    if dest.exists():
        log(f"step checkpoints: replacing the stale {dest}")
        shutil.rmtree(dest)
    os.rename(src, dest)
    fsync_dir(dest_root)
    fsync_dir(src.parent)
    prune(dest_root, keep, log)
    return dest


def prune(folder: str | Path, keep: int, log=print) -> list[Path]:
    """Delete the complete step checkpoints older than the newest `keep`; returns what it deleted."""
    complete, _ = scan(folder)
    doomed = [path for _, path in complete[:-keep]] if keep >= 1 else []
    for path in doomed:
        # The marker goes first: a deletion cut short leaves a folder that the next job ignores and removes.
        (path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    if doomed:
        fsync_dir(folder)
        log(f"step checkpoints: kept the newest {keep}, deleted {', '.join(p.name for p in doomed)}")
    return doomed


def remove_all(folder: str | Path, log=print) -> None:
    """Remove a completed epoch's step checkpoints."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        log(f"step checkpoints: epoch complete, removed {folder}")


# --------------------------------------------------------------------------- the Trainer callback

def _all_ranks_max(flag: int, device) -> int:
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([flag], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def _barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def make_callback(cfg: dict, dest_root: Path, fp: dict | None, rank: int, log=print, resumed: bool = False):
    """A TrainerCallback that asks the Trainer to save at the configured steps (never at an epoch's last step: the
    epoch's own save follows there) and publishes what the Trainer saved. `every_steps` counts global optimizer
    steps (the same steps whatever the job was resumed from); `every_minutes` is decided by rank 0's clock since the
    job's start or its last step checkpoint, and the decision is max-reduced over the ranks at every step, so every
    rank saves at the same step. Its `save_seconds` is the time spent saving, left out of the epoch's timing."""
    from transformers import TrainerCallback

    sc = section_with_defaults(cfg.get("step_checkpoints"), "train", "step_checkpoints")
    every_steps, every_minutes, keep = sc["every_steps"], sc["every_minutes"], sc["keep"]

    class StepCheckpoints(TrainerCallback):
        def __init__(self):
            self.last = time.monotonic()
            self.pending = None
            self.began = None
            self.save_seconds = 0.0
            self.saved = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.monotonic()

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.save_seconds = 0.0  # counted per epoch, like the epoch clock

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            per_epoch = max(1, state.max_steps // max(1, int(round(args.num_train_epochs))))
            due = False
            if step % per_epoch != 0 and fp is not None:
                due = every_steps is not None and step % every_steps == 0
                if every_minutes is not None:
                    mine = int(rank == 0 and time.monotonic() - self.last >= every_minutes * 60)
                    due = bool(_all_ranks_max(mine, args.device)) or due
            if due:
                control.should_save = True
                self.pending = step
                self.began = time.perf_counter()
            if _hook(TEST_STALL_AFTER_STEP, step, resumed):
                log(f"test hook: stalling after step {step}")
                time.sleep(3600)
            if _hook(TEST_KILL_AFTER_STEP, step, resumed):
                log(f"test hook: SIGKILL after step {step}")
                os.kill(os.getpid(), signal.SIGKILL)
            return control

        def on_save(self, args, state, control, **kwargs):
            if self.pending is None or self.pending != state.global_step:
                return control
            step, self.pending = self.pending, None
            src = Path(args.output_dir) / f"checkpoint-{step}"
            fsync_own_files(src, rank)
            _barrier()  # every rank's files are written and synced
            if rank == 0:
                dest = publish(src, dest_root, step, fp, keep, state.epoch, log, resumed)
                log(f"step checkpoint {step}: wrote {dest}")
            _barrier()  # no rank moves on before the checkpoint is published
            self.last = time.monotonic()
            self.saved.append(step)
            self.save_seconds += time.perf_counter() - self.began
            return control

    return StepCheckpoints()


# --------------------------------------------------------------------------- for the Slurm preflight

def step_checkpoint_problems(train_cfg: dict, time_limit_minutes: float | None,
                             estimated_step_seconds: float | None = None,
                             estimated_epoch_minutes: float | None = None) -> list[str]:
    """What stops a training job from making progress within a partition's time limit; empty when nothing does.

    - `train.step_checkpoints.every_minutes` at or past the time limit: a job killed at the limit has saved no
      step checkpoint, and its retry starts the epoch again, forever.
    - `train.step_checkpoints.every_steps` × `estimated_step_seconds` at or past the limit: the same.
    - step checkpoints off while `estimated_epoch_minutes` exceeds the limit: no job can finish an epoch.
    - `estimated_epoch_minutes` needing more jobs than `train.retries` + 1 allows, counting that a job stopped at
      the limit loses up to one interval of work.
    `time_limit_minutes` None (no limit) gives no problems, and so does an epoch estimated to end well within the
    limit (under half of it: a job that finishes needs no step checkpoint to make progress)."""
    if time_limit_minutes is None:
        return []
    if estimated_epoch_minutes is not None and estimated_epoch_minutes < time_limit_minutes / 2:
        return []
    train_cfg = section_with_defaults(train_cfg, "train")
    sc = train_cfg["step_checkpoints"]
    limit = float(time_limit_minutes)
    problems = []
    intervals = []
    if sc["every_minutes"] is not None:
        intervals.append(float(sc["every_minutes"]))
        if sc["every_minutes"] >= limit:
            problems.append(
                f"train.step_checkpoints.every_minutes is {sc['every_minutes']:g} min, but the partition's time limit "
                f"is {limit:g} min: a job stopped at the limit has saved no step checkpoint and its retry starts the "
                f"epoch again. Set train.step_checkpoints.every_minutes well below {limit:g} (e.g. {limit / 4:g}).")
    if sc["every_steps"] is not None and estimated_step_seconds:
        minutes = sc["every_steps"] * float(estimated_step_seconds) / 60
        intervals.append(minutes)
        if minutes >= limit:
            problems.append(
                f"train.step_checkpoints.every_steps is {sc['every_steps']} steps, about {minutes:.0f} min at "
                f"{estimated_step_seconds:g} s per step, but the partition's time limit is {limit:g} min: no step "
                "checkpoint would be saved before the limit. Lower train.step_checkpoints.every_steps or set "
                f"train.step_checkpoints.every_minutes below {limit:g}.")
    if estimated_epoch_minutes is not None and estimated_epoch_minutes > limit:
        if not intervals and sc["every_steps"] is None:
            problems.append(
                f"an epoch takes about {estimated_epoch_minutes:.0f} min, longer than the partition's time limit of "
                f"{limit:g} min, and step checkpoints are off (train.step_checkpoints.every_minutes and every_steps "
                "are null): no epoch job could finish. Set train.step_checkpoints.every_minutes below the limit.")
        elif intervals and min(intervals) < limit:
            progress = limit - min(intervals)  # a job killed at the limit loses at most one interval of work
            jobs = math.ceil(estimated_epoch_minutes / progress)
            if jobs > train_cfg["retries"] + 1:
                problems.append(
                    f"an epoch takes about {estimated_epoch_minutes:.0f} min; with a time limit of {limit:g} min and "
                    f"a step checkpoint every {min(intervals):.0f} min it may need {jobs} jobs, but train.retries "
                    f"({train_cfg['retries']}) allows {train_cfg['retries'] + 1}. Raise train.retries to at least "
                    f"{jobs - 1} (or lower train.step_checkpoints.every_minutes).")
    return problems
