"""`bench/efficacy.py` as a user runs it: a real one-round campaign on the fast set-up, a seed at a
time with `--first-seed`, its record taken later in its place, and bad seed arguments refused
before anything runs."""

import shutil
import subprocess

import pytest
import yaml
from bench_script import bench_script


def efficacy(*args: str) -> subprocess.CompletedProcess:
    return bench_script("efficacy.py", *args, timeout=600)


@pytest.mark.slow
def test_first_seed_runs_that_seed_alone_and_its_record_stands_in_later(tmp_path):
    runs = tmp_path / "runs"
    args = ["--fast", "--rounds", "1", "--seeds", "1", "--first-seed", "2", "--researchers", "random",
            "--runs-dir", str(runs)]
    done = efficacy(*args, "--records", str(tmp_path / "records"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in runs.glob("efficacy-*")) == ["efficacy-random-s2"]
    config = yaml.safe_load((runs / "efficacy-random-s2" / "config.yaml").read_text())
    assert config["seed"] == 2 and config["researcher"]["name"] == "random"
    assert "medians over seeds [2], 1 rounds each" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| random-s2 |"))

    record = tmp_path / "records" / "efficacy-random-s2.json"
    assert f"record: {record}" in done.stdout
    shutil.rmtree(runs / "efficacy-random-s2")
    again = efficacy(*args, "--reuse", f"random:2={record}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert row in again.stdout.splitlines()
    assert not (runs / "efficacy-random-s2").exists()  # taken from the record, not run again


def test_bad_seed_arguments_are_refused(tmp_path):
    runs = tmp_path / "runs"
    negative = efficacy("--fast", "--rounds", "1", "--seeds", "1", "--first-seed", "-1", "--runs-dir", str(runs))
    assert negative.returncode == 2 and "--first-seed at least 0" in negative.stderr
    outside = efficacy("--fast", "--rounds", "1", "--seeds", "1", "--first-seed", "1",
                       "--reuse", f"local:0={tmp_path}", "--runs-dir", str(runs))
    assert outside.returncode == 2 and "local:0 is not run here" in outside.stderr and "seeds [1]" in outside.stderr
    assert not runs.exists()


def test_a_mistyped_campaign_setting_is_refused_before_any_set_up(tmp_path):
    runs = tmp_path / "runs"
    researcher = efficacy("--fast", "--rounds", "1", "--seeds", "1", "--researchers", "random", "tpee",
                          "--runs-dir", str(runs))
    assert researcher.returncode == 2 and "researcher=tpee: no such researcher" in researcher.stderr
    assert "Traceback" not in researcher.stderr
    knob = efficacy("--fast", "--rounds", "1", "--seeds", "1", "--researchers", "local", "--runs-dir", str(runs),
                    "researcher.temprature=0.5")
    assert knob.returncode == 2 and "researcher.temprature: unknown key" in knob.stderr
    assert not runs.exists()  # no data, base or campaign made for a run that cannot start
