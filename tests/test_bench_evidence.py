"""`bench/evidence.py` as a user runs it: a real pair of one-round campaigns on the fast set-up, one
with the evidence and one without, its table, its records standing in for the campaigns later, and
bad arguments refused before anything runs."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from bench_script import bench_script

HEADER = "| evidence | final level at round | pair's best at round | final accuracy | held-out | kept | false keeps |"


def evidence(*args: str) -> subprocess.CompletedProcess:
    return bench_script("evidence.py", *args, timeout=900)


def table_rows(out: str) -> dict[str, list[str]]:
    """The cells of the condition table's rows, by condition."""
    lines = out.splitlines()
    start = lines.index(HEADER) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def hypothesis(campaign: Path, round_no: int) -> str:
    """The hypothesis of the round's chosen candidate, as the campaign's history records it."""
    history = json.loads((campaign / "journal.json").read_text())["state"]["history"]
    return next(r["hypothesis"] for r in history if r["round"] == round_no)


@pytest.mark.slow
def test_the_pair_differs_only_in_the_evidence_and_its_records_stand_in_later(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    args = ["--fast", "--rounds", "1", "--seeds", "1", "--runs-dir", str(runs)]
    done = evidence(*args, "--records", str(records))
    assert done.returncode == 0, done.stderr[-3000:]
    present, blanked = runs / "evidence-present-s0", runs / "evidence-blanked-s0"
    for campaign, shown in ((present, True), (blanked, False)):
        config = yaml.safe_load((campaign / "config.yaml").read_text())
        assert config["seed"] == 0 and config["researcher"]["name"] == "local"
        assert config["researcher"]["evidence"] is shown
    # the researcher without the evidence says so; the one with it reads the incumbent's failures
    assert hypothesis(blanked, 1).endswith("chosen without the evidence (evidence: false)")
    assert "the incumbent" in hypothesis(present, 1) and "evidence: false" not in hypothesis(present, 1)

    rows = table_rows(done.stdout)
    assert sorted(rows) == ["blanked", "present"]
    for cells in rows.values():  # six figures a condition; a random base never rises, so level 0
        assert len(cells) == 6 and cells[0] == "0" and cells[4] == "0" and cells[5] == "0", cells
    assert "medians over seeds [0], 1 rounds each" in done.stdout
    assert "| present-s0 |" in done.stdout and "| blanked-s0 |" in done.stdout  # every campaign's row

    reuse = []
    for condition, campaign in (("present", present), ("blanked", blanked)):
        record = records / f"{campaign.name}.json"
        assert f"record: {record}" in done.stdout
        reuse += ["--reuse", f"{condition}:0={record}"]
        shutil.rmtree(campaign)
    again = evidence(*args, *reuse)
    assert again.returncode == 0, again.stderr[-3000:]
    assert table_rows(again.stdout) == rows
    assert not present.exists() and not blanked.exists()  # taken from the records, not run again


def test_bad_arguments_are_refused_before_any_set_up(tmp_path):
    runs = tmp_path / "runs"
    condition = evidence("--fast", "--rounds", "1", "--seeds", "1", "--reuse", f"hidden:0={tmp_path}",
                         "--runs-dir", str(runs))
    assert condition.returncode == 2 and "hidden:0 is not run here" in condition.stderr
    assert "present" in condition.stderr and "blanked" in condition.stderr  # the groups it could be
    seed = evidence("--fast", "--rounds", "1", "--seeds", "1", "--reuse", f"present:3={tmp_path}",
                    "--runs-dir", str(runs))
    assert seed.returncode == 2 and "present:3 is not run here" in seed.stderr
    knob = evidence("--fast", "--rounds", "1", "--seeds", "1", "--runs-dir", str(runs), "researcher.evidense=false")
    assert knob.returncode == 2 and "researcher.evidense: unknown key" in knob.stderr
    assert "Traceback" not in knob.stderr
    assert not runs.exists()  # no data, base or campaign made for a run that cannot start
