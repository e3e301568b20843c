"""Human evaluation: export a blind rating sheet, import filled sheets, summarise and measure agreement.

Takes: evaluation items (for the prompt) and the predictions of the models to compare.
Gives:
- `export_sheet`: a CSV rating sheet and a key file. The sheet opens with `#` lines holding the rubric, then a header
  `id,prompt,expected,response,score,comment` and one row per (item, model) response, shuffled and labelled with
  opaque ids so raters do not know which model wrote what; the key (JSON) maps each id back to item and model.
- `import_sheets`: filled sheets (one per rater, same ids) checked line by line: an id missing or unknown or
  repeated, a missing score, a score that is not an integer 0-5 are all errors, reported together with their line
  numbers, and the sheet is rejected; rows deleted from a sheet are reported by id.
- `summarise`: per model (and per rater) the number of ratings, mean score, usable rate (share of 4-5) and policy
  violation rate (share of 0); for every pair of raters, on the items both rated: exact agreement, agreement within
  one point, and Cohen's kappa with quadratic weights over the 0-5 scale.

The rubric is the seed's: 5 fully correct ... 1 core information wrong; a policy violation scores 0.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from agenttune.common.atomic import write_text

RUBRIC = (
    ("5", "fully correct: the right tool call (or answer), complete and usable as is"),
    ("4", "correct with minor issues: small omissions or formatting a user would fix in seconds"),
    ("3", "partly correct: right intent but a wrong or missing argument, or an incomplete answer"),
    ("2", "mostly wrong: wrong tool or arguments, little of it usable"),
    ("1", "core information wrong (or no usable output at all)"),
    ("0", "policy violation (harmful, unsafe or disallowed content), whatever else it gets right"),
)
COLUMNS = ("id", "prompt", "expected", "response", "score", "comment")
SCORES = range(0, 6)


class SheetError(ValueError):
    """A rating sheet that cannot be used; the message lists every problem with its line number."""


def _prompt_text(messages: list[dict]) -> str:
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def export_sheet(items_path, predictions: dict[str, str], n_items: int, seed: int, sheet_path, key_path) -> dict:
    """Sample `n_items` items (seeded; the same for every model), one row per item and model, shuffled."""
    with open(items_path, encoding="utf-8") as fh:
        items = {it["id"]: it for it in map(json.loads, filter(str.strip, fh))}
    preds = {}
    for model, path in predictions.items():
        with open(path, encoding="utf-8") as fh:
            preds[model] = {p["id"]: p for p in map(json.loads, filter(str.strip, fh))}
    common = sorted(set(items).intersection(*[set(p) for p in preds.values()]))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(common, min(n_items, len(common))))
    rows = [(item_id, model) for item_id in chosen for model in sorted(preds)]
    rng.shuffle(rows)
    key, out_rows = {}, []
    for k, (item_id, model) in enumerate(rows, start=1):
        # The id carries a digest of the row's content, so a sheet exported before a re-run cannot be imported
        # against a newer key by accident.
        digest = hashlib.sha256(f"{item_id}\x1f{model}\x1f{preds[model][item_id]['output']}".encode()).hexdigest()
        sheet_id = f"r{k:03d}-{digest[:6]}"
        item = items[item_id]
        expected = item["expected"]
        out_rows.append({
            "id": sheet_id,
            "prompt": _prompt_text(item["prompt_messages"]),
            "expected": json.dumps(expected, ensure_ascii=False) if expected else
            "(no tool call; answer directly) " + item.get("reference", ""),
            "response": preds[model][item_id]["output"],
            "score": "",
            "comment": "",
        })
        key[sheet_id] = {"item": item_id, "model": model}
    buf = io.StringIO(newline="")
    buf.write("# Rating sheet: score each response from 0 to 5 in the 'score' column; comments are optional.\n")
    buf.write("# Rubric:\n")
    for score, text in RUBRIC:
        buf.write(f"#   {score} = {text}\n")
    buf.write("# Do not change the id column or delete rows. Lines starting with # are ignored.\n")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(out_rows)
    write_text(sheet_path, buf.getvalue())
    write_text(key_path, json.dumps(key, indent=2, sort_keys=True) + "\n")
    return {"rows": len(out_rows), "items": len(chosen), "models": sorted(preds)}


def read_sheet(path, key: dict) -> dict[str, int]:
    """Scores by sheet id from one filled sheet; SheetError listing every bad line."""
    path = Path(path)
    errors: list[str] = []
    scores: dict[str, int] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    # Skip the rubric comment lines but keep physical line numbers for the messages.
    start = 0
    while start < len(lines) and (lines[start].startswith("#") or not lines[start].strip()):
        start += 1
    reader = csv.reader(lines[start:])
    header = next(reader, None)
    if header is None:
        raise SheetError(f"{path}: no header line")
    header = [h.strip().lower() for h in header]
    missing_cols = [c for c in ("id", "score") if c not in header]
    if missing_cols:
        raise SheetError(f"{path}:{start + 1}: header lacks column(s) {', '.join(missing_cols)}")
    id_col, score_col = header.index("id"), header.index("score")
    while True:
        line = start + reader.line_num + 1  # the physical line the next row starts on (prompts span lines)
        row = next(reader, None)
        if row is None:
            break
        if not row or all(not cell.strip() for cell in row) or row[0].startswith("#"):
            continue
        sheet_id = row[id_col].strip() if id_col < len(row) else ""
        raw = row[score_col].strip() if score_col < len(row) else ""
        if not sheet_id:
            errors.append(f"{path}:{line}: missing id")
            continue
        if sheet_id not in key:
            errors.append(f"{path}:{line}: id {sheet_id!r} is not in this sheet's key (another export?)")
            continue
        if sheet_id in first_line:
            errors.append(f"{path}:{line}: id {sheet_id!r} already rated on line {first_line[sheet_id]}")
            continue
        first_line[sheet_id] = line
        if not raw:
            errors.append(f"{path}:{line}: id {sheet_id}: missing score")
            continue
        try:
            value = float(raw)
        except ValueError:
            errors.append(f"{path}:{line}: id {sheet_id}: score {raw!r} is not a number")
            continue
        if not value.is_integer() or int(value) not in SCORES:
            errors.append(f"{path}:{line}: id {sheet_id}: score {raw!r} is out of range (an integer 0-5)")
            continue
        scores[sheet_id] = int(value)
    absent = sorted(set(key) - set(first_line))
    if absent:
        errors.append(f"{path}: {len(absent)} id(s) of the key have no row: {', '.join(absent[:10])}"
                      + (" ..." if len(absent) > 10 else ""))
    if errors:
        raise SheetError(f"{path}: rejected, {len(errors)} problem(s):\n" + "\n".join(errors))
    return scores


def cohen_kappa_quadratic(a: list[int], b: list[int], categories=SCORES) -> float | None:
    """Cohen's kappa with quadratic weights; None when it is undefined (no variation in the expected table)."""
    cats = list(categories)
    k, n = len(cats), len(a)
    if n == 0:
        return None
    index = {c: i for i, c in enumerate(cats)}
    observed = [[0.0] * k for _ in range(k)]
    for x, y in zip(a, b):
        observed[index[x]][index[y]] += 1
    rows = [sum(r) for r in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    weight = [[(i - j) ** 2 / (k - 1) ** 2 for j in range(k)] for i in range(k)]
    num = sum(weight[i][j] * observed[i][j] for i in range(k) for j in range(k))
    den = sum(weight[i][j] * rows[i] * cols[j] / n for i in range(k) for j in range(k))
    return None if den == 0 else 1.0 - num / den


def _stats(values: list[int]) -> dict:
    n = len(values)
    return {
        "n": n,
        "mean": sum(values) / n if n else None,
        "usable_rate": sum(1 for v in values if v >= 4) / n if n else None,
        "policy_violation_rate": sum(1 for v in values if v == 0) / n if n else None,
        "distribution": {str(s): sum(1 for v in values if v == s) for s in SCORES},
    }


def summarise(key: dict, sheets: dict[str, dict[str, int]]) -> dict:
    """`sheets`: rater -> {sheet id: score}."""
    by_model: dict[str, list[int]] = defaultdict(list)
    by_rater_model: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for rater, scores in sorted(sheets.items()):
        for sheet_id, score in sorted(scores.items()):
            model = key[sheet_id]["model"]
            by_model[model].append(score)
            by_rater_model[rater][model].append(score)
    agreement = []
    for r1, r2 in combinations(sorted(sheets), 2):
        shared = sorted(set(sheets[r1]) & set(sheets[r2]))
        a, b = [sheets[r1][i] for i in shared], [sheets[r2][i] for i in shared]
        agreement.append({
            "raters": [r1, r2],
            "n": len(shared),
            "exact": sum(x == y for x, y in zip(a, b)) / len(shared) if shared else None,
            "within_1": sum(abs(x - y) <= 1 for x, y in zip(a, b)) / len(shared) if shared else None,
            "kappa_quadratic": cohen_kappa_quadratic(a, b),
        })
    return {
        "raters": sorted(sheets),
        "models": {m: _stats(v) for m, v in sorted(by_model.items())},
        "by_rater": {r: {m: _stats(v) for m, v in sorted(ms.items())} for r, ms in sorted(by_rater_model.items())},
        "agreement": agreement,
    }


def import_sheets(key_path, sheet_paths: dict[str, str]) -> dict:
    """Read every rater's sheet (all problems of all sheets reported together) and summarise."""
    key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    sheets, problems = {}, []
    for rater, path in sorted(sheet_paths.items()):
        try:
            sheets[rater] = read_sheet(path, key)
        except SheetError as exc:
            problems.append(str(exc))
    if problems:
        raise SheetError("\n".join(problems))
    return summarise(key, sheets)
