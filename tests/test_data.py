"""Splits: determinism, disjointness by canonical problem, the on-disk cache and its hashes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from rl_pipeline import data
from rl_pipeline.data import SPLITS, build_splits, load_splits, split_hash, split_of
from rl_pipeline.manifest import DEFAULT_SIZES, ManifestError, eval_sizes, split_hashes, splits_folder
from rl_pipeline.tasks import ArithTask, get_task

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
SMALL = {"train": 600, "calibration": 60, "eval": 60, "heldout": 60}


@pytest.fixture
def builds(monkeypatch):
    """Count how often the splits are really generated."""
    calls = []
    real = data.build_splits

    def counting(task, sizes, seed):
        calls.append((task.name, dict(sizes), seed))
        return real(task, sizes, seed)

    monkeypatch.setattr(data, "build_splits", counting)
    return calls


def hashes(splits):
    return {split: split_hash(splits[split]) for split in SPLITS}


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_same_seed_same_data_other_seed_other_data(name):
    task = get_task(name)
    first, again, other = (build_splits(task, SMALL, seed) for seed in (0, 0, 1))
    assert hashes(first) == hashes(again)
    assert first["eval"].to_list() == again["eval"].to_list()
    assert all(hashes(first)[s] != hashes(other)[s] for s in SPLITS)


def test_eval_does_not_depend_on_train_size():
    task = get_task("arith")
    small = build_splits(task, SMALL, 0)
    large = build_splits(task, {**SMALL, "train": 1200}, 0)
    assert split_hash(small["eval"]) == split_hash(large["eval"])
    assert split_hash(small["heldout"]) == split_hash(large["heldout"])


def problem(row):
    """The problem a row poses, worked out from its fields and not from meta["canonical"], so the
    check does not trust the code under test: operand order of + and * and the order of the
    countdown numbers are surface."""
    meta = row["meta"]
    if row["task"] == "arith":
        operands = (meta["a"], meta["b"]) if meta["op"] == "-" else tuple(sorted((meta["a"], meta["b"])))
        return meta["op"], operands
    return tuple(sorted(meta["numbers"])), meta["target"]


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_splits_are_disjoint_by_problem(name):
    # Two seeds: problems must not cross splits even between differently seeded datasets.
    problems = {split: set() for split in SPLITS}
    for seed in (0, 1):
        splits = build_splits(get_task(name), SMALL, seed)
        for split in SPLITS:
            rows = splits[split].to_list()
            assert len(rows) == SMALL[split]
            keys = [problem(row) for row in rows]
            assert len(set(keys)) == len(keys), f"{split} repeats a problem"
            assert len({row["id"] for row in rows}) == len(rows)
            owner = "train" if split == "calibration" else split  # calibration draws from train's buckets
            assert all(split_of(name, row["meta"]["canonical"]) == owner for row in rows)
            problems[split].update(keys)
        # Calibration shares train's buckets, so it is disjoint from this seed's train split only.
        assert not {problem(r) for r in splits["calibration"].to_list()} & {problem(r) for r in splits["train"].to_list()}
    problems.pop("calibration")
    named = [split for split in SPLITS if split in problems]
    for i, one in enumerate(named):
        for other in named[i + 1:]:
            assert not problems[one] & problems[other], f"{one} and {other} share a problem"


def test_cache_is_reused(tmp_path, builds):
    first = load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    again = load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    assert len(builds) == 1
    assert hashes(first) == hashes(again)
    manifest = json.loads((splits_folder(tmp_path, "arith", SMALL) / data.MANIFEST).read_text())
    assert manifest["hashes"] == hashes(first)
    assert manifest["key"]["version"] == ArithTask.version
    assert {len(first[s]) for s in SPLITS} == set(SMALL.values())


def test_split_hashes_reads_the_manifest_without_datasets(tmp_path):
    splits = load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    assert split_hashes(tmp_path, "arith", SMALL) == hashes(splits)
    # What the Ray driver calls to order its jobs reads the manifest, and never imports `datasets`;
    # it asks for the default sizes, so the small splits stand in for them.
    shutil.copytree(splits_folder(tmp_path, "arith", SMALL), tmp_path / "arith")
    probe = ("import sys; from rl_pipeline.run import expected_work_s; "
             f"print(expected_work_s({str(ARITH)!r}, seeds=[0], base={str(tmp_path / 'base')!r}, "
             f"data_dir={str(tmp_path)!r}, cache_dir={str(tmp_path / 'cache')!r}) > 0, 'datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


@pytest.mark.parametrize("damage", ["missing", "not json", "no hashes"])
def test_split_hashes_says_which_manifest_it_cannot_read(tmp_path, damage):
    load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    manifest = splits_folder(tmp_path, "arith", SMALL) / data.MANIFEST
    if damage == "missing":
        manifest.unlink()
    else:
        manifest.write_text("{not json" if damage == "not json" else json.dumps({"key": {}}))
    with pytest.raises(ManifestError, match=f"no readable data manifest at {manifest}"):
        split_hashes(tmp_path, "arith", SMALL)


def test_cache_is_rebuilt_when_the_task_version_changes(tmp_path, builds, monkeypatch):
    load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    monkeypatch.setattr(ArithTask, "version", "test-bump")
    load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    assert len(builds) == 2
    manifest = json.loads((splits_folder(tmp_path, "arith", SMALL) / data.MANIFEST).read_text())
    assert manifest["key"]["version"] == "test-bump"


def test_other_sizes_have_a_folder_of_their_own_and_a_seed_change_rebuilds(tmp_path, builds):
    small = load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    resized = load_splits("arith", data_dir=tmp_path, sizes={**SMALL, "eval": 30})
    assert hashes(load_splits("arith", data_dir=tmp_path, sizes=SMALL)) == hashes(small)  # not replaced
    reseeded = load_splits("arith", data_dir=tmp_path, sizes={**SMALL, "eval": 30}, seed=5)
    assert len(builds) == 3
    assert len(resized["eval"]) == 30
    assert split_hash(resized["eval"]) != split_hash(reseeded["eval"])
    # No temporary or old folders are left behind by the swaps.
    names = [splits_folder(tmp_path, "arith", sizes).name for sizes in (SMALL, {**SMALL, "eval": 30})]
    assert names == ["arith-train600-calibration60-eval60-heldout60", "arith-train600-calibration60-eval30-heldout60"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + [f".{name}.lock" for name in names])


def test_a_larger_eval_split_begins_with_the_smaller_one_and_trains_on_the_same_data(tmp_path):
    task = get_task("arith")
    small, large = build_splits(task, SMALL, 0), build_splits(task, {**SMALL, "eval": 120, "heldout": 120}, 0)
    for split in ("eval", "heldout"):
        assert large[split].select(range(60)).to_list() == small[split].to_list()
        assert len(large[split]) == 120
    assert split_hash(large["train"]) == split_hash(small["train"])
    assert split_hash(large["calibration"]) == split_hash(small["calibration"])
    # A campaign's split_size names its folder; the default size is the plain task folder.
    assert splits_folder(tmp_path, "arith", eval_sizes(800)) == tmp_path / "arith-eval800-heldout800"
    assert splits_folder(tmp_path, "arith", eval_sizes(DEFAULT_SIZES["eval"])) == tmp_path / "arith"
    assert splits_folder(tmp_path, "arith") == tmp_path / "arith"


def test_a_split_larger_than_the_task_holds_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="distinct eval problems of 1000 .* too small for this size"):
        load_splits("arith", data_dir=tmp_path, sizes={**SMALL, "eval": 1000})
    assert not splits_folder(tmp_path, "arith", {**SMALL, "eval": 5000}).exists()


def test_corrupted_cache_is_rebuilt(tmp_path, builds):
    original = hashes(load_splits("arith", data_dir=tmp_path, sizes=SMALL))
    arrow = next((splits_folder(tmp_path, "arith", SMALL) / "eval").glob("*.arrow"))
    arrow.write_bytes(b"not an arrow file")
    assert hashes(load_splits("arith", data_dir=tmp_path, sizes=SMALL)) == original
    assert len(builds) == 2


def test_partial_cache_is_rebuilt(tmp_path, builds):
    original = hashes(load_splits("countdown", data_dir=tmp_path, sizes=SMALL))
    folder = splits_folder(tmp_path, "countdown", SMALL)
    (folder / data.MANIFEST).unlink()  # as if killed before the manifest was written
    assert hashes(load_splits("countdown", data_dir=tmp_path, sizes=SMALL)) == original
    (folder / data.MANIFEST).write_text("{not json")
    assert hashes(load_splits("countdown", data_dir=tmp_path, sizes=SMALL)) == original
    assert len(builds) == 3


def test_tampered_split_is_rebuilt(tmp_path, builds):
    splits = load_splits("arith", data_dir=tmp_path, sizes=SMALL)
    original = hashes(splits)
    # Rewrite eval with one answer changed but keep the manifest: the hash check must catch it.
    rows = splits["eval"].to_list()
    rows[0]["answer"] = "0"
    shutil.rmtree(splits_folder(tmp_path, "arith", SMALL) / "eval")
    Dataset.from_list(rows).save_to_disk(str(splits_folder(tmp_path, "arith", SMALL) / "eval"))
    assert hashes(load_splits("arith", data_dir=tmp_path, sizes=SMALL)) == original
    assert len(builds) == 2


def test_split_hash_sees_any_change():
    splits = build_splits(get_task("arith"), SMALL, 0)
    eval_split = splits["eval"]
    rows = eval_split.to_list()
    rows[5]["question"] += " "
    assert split_hash(Dataset.from_list(rows)) != split_hash(eval_split)
    assert split_hash(eval_split.select(range(59))) != split_hash(eval_split)
    assert split_hash(eval_split.select(list(range(59, -1, -1)))) != split_hash(eval_split)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        load_splits("nope")
    with pytest.raises(ValueError, match="unknown splits"):
        load_splits("arith", sizes={"test": 5})
    with pytest.raises(ValueError, match="positive integer"):
        load_splits("arith", sizes={"eval": 0})
