"""The pretraining corpus's answer styles and the calibrated stop of the base, on the real corpus."""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from rl_pipeline import env
from rl_pipeline.corpus import (ANSWER_STYLES, Band, answer_value, ensure_base, pretrain_base, pretrain_pairs,
                                styled_answer)
from rl_pipeline.env import SPIN_COUNT, free_cores
from rl_pipeline.files import file_lock
from rl_pipeline.tasks import get_task


def test_answer_styles_follow_their_shares_and_only_bare_passes_the_scorer(tmp_path):
    pairs = pretrain_pairs(str(tmp_path / "data"))
    assert len(pairs) > 5000
    styles = Counter()
    task = get_task("arith")
    for _, answer in pairs:
        value = answer_value(answer)
        styles[next(name for name, (template, _) in ANSWER_STYLES.items()
                    if template.format(answer=value) == answer)] += 1
        bare = answer == value
        assert task.score(answer, {"answer": value}).correct == bare
    for name, (_, share) in ANSWER_STYLES.items():
        assert abs(styles[name] / len(pairs) - share) < 0.03, (name, styles)
    assert styled_answer("arith-1", "42") == styled_answer("arith-1", "42")  # fixed by the id


@pytest.mark.parametrize("completion, value", [("-12 is the answer.", "-12"), ("7.", "7"), ("3 4\n5", "4"),
                                               ("none", None), ("\n12", None)])
def test_answer_value_reads_the_last_integer_of_the_answer_line(completion, value):
    assert answer_value(completion) == value


def test_pretraining_stops_at_the_band_and_records_its_readings(tmp_path):
    data = str(tmp_path / "data")
    summary = pretrain_base(str(tmp_path / "base"), data_dir=data, band=Band(low=0.0, high=1.0, every=3, max_steps=30))
    written = json.loads((tmp_path / "base" / "pretrain.json").read_text())
    assert summary["steps"] == written["steps"] == 3 and written["stopped_by"] == "calibration"
    assert written["calibration"]["in_band"] and len(written["calibration"]["history"]) == 1
    step, answers, strict = written["calibration"]["history"][0]
    assert step == 3 and 0.0 <= strict <= answers <= 1.0


def test_a_base_that_never_reaches_the_band_is_reported(tmp_path, capsys):
    band = Band(low=0.99, high=1.0, every=2, max_steps=4)
    summary = pretrain_base(str(tmp_path / "base"), data_dir=str(tmp_path / "data"), band=band)
    assert summary["steps"] == 4 and summary["stopped_by"] == "max_steps"
    assert [h[0] for h in summary["calibration"]["history"]] == [2, 4]
    assert not summary["calibration"]["in_band"]
    assert "outside the band 0.99-1.00" in " ".join(capsys.readouterr().out.split())


def test_ensure_base_pretrains_on_the_data_folder_it_is_given_and_writes_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "campaigns" / "data"
    ensure_base(str(tmp_path / "campaigns" / "models" / "base"), data_dir=str(data),
                band=Band(low=0.0, high=1.0, every=2, max_steps=10))
    assert (tmp_path / "campaigns" / "models" / "base" / "config.json").is_file()
    assert (data / "arith" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaigns"]  # no stray runs/data in the working folder


ENSURE = ("import sys; from rl_pipeline.corpus import Band, ensure_base; "
          "ensure_base(sys.argv[1], data_dir=sys.argv[2], band=Band(low=0.0, high=1.0, every=2, max_steps=10))")


def test_two_campaigns_starting_at_once_pretrain_the_base_once(tmp_path):
    base, data = tmp_path / "models" / "base", tmp_path / "data"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".base.tmp-killed").mkdir()  # a killed pretraining's leftover
    outs: list[list[str]] = [[], []]
    with file_lock(tmp_path / "models" / ".base.lock"):  # a third pretraining holds it: both must wait
        procs = [subprocess.Popen([sys.executable, "-c", ENSURE, str(base), str(data)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
                 for _ in range(2)]
        readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stdout), daemon=True)
                   for p, out in zip(procs, outs)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 120
        while not all("waiting for it" in " ".join(" ".join(out).split()) for out in outs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), outs
            time.sleep(0.2)
    for proc, reader in zip(procs, readers):
        proc.wait(timeout=600)
        reader.join(timeout=10)
    texts = [" ".join(" ".join(out).split()) for out in outs]
    assert [proc.returncode for proc in procs] == [0, 0], texts
    assert sum("missing, pretraining it" in text for text in texts) == 1, texts
    assert sum("found: pretrained by another process meanwhile" in text for text in texts) == 1, texts
    assert json.loads((base / "pretrain.json").read_text())["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".base.lock", "base"]


def test_pretraining_refuses_a_folder_that_is_not_a_base_and_leaves_it_as_it_was(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a base policy's folder"):
        pretrain_base(str(folder), data_dir=str(tmp_path / "data"), steps=1)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and (folder / "keep.txt").read_text() == "mine"


def test_a_pretraining_that_fails_leaves_the_base_there_as_it_was(tmp_path):
    base, data = tmp_path / "base", str(tmp_path / "data")
    pretrain_base(str(base), data_dir=data, steps=1)
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    with pytest.raises(ValueError, match="unknown preset"):
        pretrain_base(str(base), data_dir=data, steps=1, preset="no-such-preset")
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".base.lock", "base", "data"]


def test_free_cores_counts_the_cores_other_processes_keep_busy():
    cores = len(os.sched_getaffinity(0))
    with open("/proc/stat") as f:
        listed = sum(1 for line in f if line.startswith("cpu") and line[3].isdigit())
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        free = free_cores()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    if listed != cores:  # a container's view of its host: no reading
        assert free is None
    else:
        assert free is not None and 0.0 <= free < 0.75, free


@pytest.mark.parametrize("free, wait_policy, spin_count", [(2.0, None, str(SPIN_COUNT)), (1.0, "PASSIVE", None),
                                                            (None, "PASSIVE", None)])
def test_pretraining_threads_spin_only_where_the_cores_were_idle(tmp_path, monkeypatch, free, wait_policy,
                                                                 spin_count):
    monkeypatch.setattr(env, "free_cores", lambda: free)  # the reading; the child and its env are real
    summary = pretrain_base(str(tmp_path / "base"), data_dir=str(tmp_path / "data"), steps=1)
    assert summary["steps"] == 1
    assert summary["openmp"] == {"threads": 2, "free_cores": free, "OMP_WAIT_POLICY": wait_policy,
                                 "GOMP_SPINCOUNT": spin_count}
