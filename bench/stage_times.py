"""Wall time of every job of a Snakemake run, from its log (the console output or .snakemake/log/*.log).

Snakemake stamps each job's start ("[date]" then "rule NAME:" ... "jobid: N") and end ("[date]" then "Finished
jobid: N"); this pairs them. Times have one-second resolution; jobs that ran side by side overlap.
Usage: .venv/bin/python bench/stage_times.py <snakemake log> [--markdown]
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")


def parse(lines) -> list[dict]:
    stamp = None
    jobs: dict[int, dict] = {}
    pending = None
    for line in lines:
        line = line.rstrip("\n")
        if m := _STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            pending = {"rule": m.group(1), "wildcards": "", "start": stamp}
        elif pending is not None and (m := _JOBID.match(line)):
            jobs[int(m.group(1))] = pending
        elif pending is not None and (m := _WILDCARDS.match(line)):
            pending["wildcards"] = m.group(1)
        elif m := _FINISHED.match(line):
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job["end"] = stamp
    out = []
    for jobid, job in sorted(jobs.items(), key=lambda kv: (kv[1]["start"], kv[0])):
        end = job.get("end")
        out.append({"jobid": jobid, "rule": job["rule"], "wildcards": job["wildcards"],
                    "start": job["start"].isoformat(sep=" "), "end": end.isoformat(sep=" ") if end else None,
                    "seconds": (end - job["start"]).total_seconds() if end else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with open(args.log, encoding="utf-8", errors="replace") as fh:
        jobs = parse(fh)
    if not args.markdown:
        print(json.dumps(jobs, indent=1))
        return
    print("| job | wildcards | start | wall |")
    print("|---|---|---|---|")
    for j in jobs:
        wall = "unfinished" if j["seconds"] is None else f"{j['seconds'] / 60:.1f} min" if j["seconds"] >= 60 \
            else f"{j['seconds']:.0f} s"
        print(f"| {j['rule']} | {j['wildcards']} | {j['start'][11:]} | {wall} |")


if __name__ == "__main__":
    main()
