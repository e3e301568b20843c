"""Human evaluation: a blind rating sheet round trip, bad sheets rejected with line numbers, the summary, agreement."""

from __future__ import annotations

import csv
import json

import pytest

from agenttune.evaluate.human import SheetError, cohen_kappa_quadratic, export_sheet, import_sheets, read_sheet, summarise


@pytest.fixture()
def exported(tmp_path):
    items, base, tuned = [], [], []
    for k in range(6):
        items.append({"id": f"s{k}@2", "prompt_messages": [
            {"role": "system", "content": "tools"}, {"role": "user", "content": f"Question {k}, with a comma\nand a line"}],
            "expected": {"name": "get_weather", "arguments": {"city": f"C{k}"}} if k % 3 else None,
            "reference": f"answer {k}"})
        base.append({"id": f"s{k}@2", "output": f"base says \"{k}\""})
        tuned.append({"id": f"s{k}@2", "output": f"Action: get_weather\nAction Input: {{\"city\": \"C{k}\"}}"})
    paths = {}
    for name, rows in (("items", items), ("base", base), ("epoch-2", tuned)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.json"
    stats = export_sheet(paths["items"], {"base": paths["base"], "epoch-2": paths["epoch-2"]}, 4, 11, sheet, key)
    return sheet, key, stats


def fill(sheet, out, scores_by_model, key, edit=None):
    """Copy the sheet, putting a score in every row (by the model the key names for it)."""
    key = json.loads(key.read_text())
    text = sheet.read_text()
    head = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    rows = list(csv.DictReader(line for line in text.splitlines(keepends=True) if not line.startswith("#")))
    for k, row in enumerate(rows):
        row["score"] = str(scores_by_model[key[row["id"]]["model"]][k % 2])
    if edit:
        edit(rows)
    with out.open("w", newline="") as fh:
        fh.write(head)
        writer = csv.DictWriter(fh, fieldnames=["id", "prompt", "expected", "response", "score", "comment"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_export_is_blind_seeded_and_carries_the_rubric(exported, tmp_path):
    sheet, key, stats = exported
    assert stats == {"rows": 8, "items": 4, "models": ["base", "epoch-2"]}
    text = sheet.read_text()
    assert "#   5 = fully correct" in text and "#   1 = core information wrong" in text and "#   0 = policy" in text
    assert "base" not in text.split("id,prompt", 1)[1].split("\n", 1)[0]  # no model column
    rows = list(csv.DictReader(line for line in text.splitlines(keepends=True) if not line.startswith("#")))
    assert len(rows) == 8 and all(r["score"] == "" for r in rows)
    assert any("\n" in r["prompt"] for r in rows)  # multi-line cells survive
    models = [json.loads(key.read_text())[r["id"]]["model"] for r in rows]
    assert sorted(models) == ["base"] * 4 + ["epoch-2"] * 4
    assert models != sorted(models)  # shuffled, so position does not give the model away


def test_round_trip_summary_and_agreement(exported, tmp_path):
    sheet, key, _ = exported
    alice = fill(sheet, tmp_path / "alice.csv", {"base": [1, 2], "epoch-2": [5, 4]}, key)
    bob = fill(sheet, tmp_path / "bob.csv", {"base": [1, 3], "epoch-2": [5, 0]}, key)
    summary = import_sheets(key, {"alice": alice, "bob": bob})
    assert summary["raters"] == ["alice", "bob"]
    alice_tuned = summary["by_rater"]["alice"]["epoch-2"]
    assert alice_tuned["n"] == 4 and alice_tuned["mean"] == pytest.approx(4.5) and alice_tuned["usable_rate"] == 1.0
    bob_tuned = summary["by_rater"]["bob"]["epoch-2"]
    assert bob_tuned["policy_violation_rate"] == pytest.approx(0.5)
    (agree,) = summary["agreement"]
    assert agree["n"] == 8 and agree["exact"] == pytest.approx(4 / 8)
    a = [read_sheet(alice, json.loads(key.read_text()))[i] for i in sorted(json.loads(key.read_text()))]
    b = [read_sheet(bob, json.loads(key.read_text()))[i] for i in sorted(json.loads(key.read_text()))]
    assert agree["kappa_quadratic"] == pytest.approx(cohen_kappa_quadratic(a, b))


def test_kappa_hand_checked():
    assert cohen_kappa_quadratic([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert cohen_kappa_quadratic([3, 3, 3], [3, 3, 3]) is None  # no variation: undefined
    # Two raters, scores {1, 2} only; by hand with k = 6 categories (0-5), weights (i-j)^2/25:
    # observed off-diagonal (1,2) once and (2,1) once, n = 4 -> sum w*O = 2/25;
    # marginals: rater A 1:2, 2:2; rater B 1:2, 2:2 -> expected cells 1 each -> sum w*E = 2/25 -> kappa = 0.
    assert cohen_kappa_quadratic([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0.0)
    # Systematic disagreement is worse than chance.
    assert cohen_kappa_quadratic([1, 5, 1, 5], [5, 1, 5, 1]) < 0


def test_bad_sheets_are_rejected_with_line_numbers(exported, tmp_path):
    sheet, key, _ = exported

    def damage(rows):
        rows[0]["score"] = "7"          # out of range
        rows[1]["score"] = ""           # missing score
        rows[2]["id"] = ""              # missing id
        rows[3]["id"] = "r999-abcdef"   # unknown id
        rows[4]["score"] = "4.5"        # not an integer
        rows[5]["id"] = rows[6]["id"]   # repeated id (and rows[5]'s own id is then absent)

    bad = fill(sheet, tmp_path / "bad.csv", {"base": [1, 2], "epoch-2": [5, 4]}, key, edit=damage)
    with pytest.raises(SheetError) as err:
        import_sheets(key, {"carol": bad})
    text = str(err.value)
    lines = bad.read_text().splitlines()
    header_line = next(i for i, line in enumerate(lines, start=1) if line.startswith("id,"))
    # Each data row spans 3 physical lines here (the prompt holds two line breaks); row k starts at:
    starts = []
    n = header_line
    reader_lines = bad.read_text().splitlines(keepends=True)[header_line:]
    for row in csv.reader(reader_lines):
        starts.append(n + 1)
        n += 1 + sum(cell.count("\n") for cell in row)
    assert f"bad.csv:{starts[0]}: id" in text and "out of range" in text
    assert f"bad.csv:{starts[1]}: id" in text and "missing score" in text
    assert f"bad.csv:{starts[2]}: missing id" in text
    assert f"bad.csv:{starts[3]}: id 'r999-abcdef' is not in this sheet's key" in text
    assert f"bad.csv:{starts[4]}: id" in text and "'4.5'" in text
    assert f"bad.csv:{starts[6]}: id" in text and "already rated on line" in text
    assert "have no row" in text


def test_summary_without_a_second_rater_has_no_agreement():
    key = {"a": {"item": "i", "model": "base"}, "b": {"item": "i", "model": "epoch-1"}}
    s = summarise(key, {"alice": {"a": 3, "b": 5}})
    assert s["agreement"] == [] and s["models"]["epoch-1"]["usable_rate"] == 1.0
