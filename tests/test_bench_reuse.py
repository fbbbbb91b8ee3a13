"""The campaign benchmarks' `--reuse`: a campaign run earlier in another runs folder, or its record,
stands in for the one a benchmark would run only when it ran the same config on the same base, data
and scaffold and got through the rounds; anything else is refused, saying what differs."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from campaign_runs import ReuseError, fast_setup, parse_reuse, reuse, run, write_record  # noqa: E402

from harness.config import compose_config  # noqa: E402
from rl_pipeline.manifest import MANIFEST, eval_sizes, splits_folder  # noqa: E402


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A real 2-round campaign of the random researcher on the fast set-up; its runs folder, its
    overrides and its history."""
    runs = tmp_path_factory.mktemp("earlier") / "runs"
    common = fast_setup(runs)
    overrides = ["seed=0", "researcher=random", *common]
    history = run(runs, "old", 2, overrides)
    assert [r["round"] for r in history] == [0, 1, 2]
    return runs, overrides, history


def other_runs(tmp_path: Path, earlier_runs: Path) -> Path:
    """A second runs folder holding the same data splits (as a benchmark's set-up copies them)."""
    runs = tmp_path / "runs"
    shutil.copytree(earlier_runs / "data", runs / "data")
    return runs


def manifest_of(runs: Path, overrides: list[str]) -> Path:
    """The manifest of the splits a campaign of `overrides` in `runs` is scored on."""
    return splits_folder(runs / "data", "arith", eval_sizes(compose_config(overrides)["split_size"])) / MANIFEST


def test_the_same_campaign_is_taken_for_its_first_rounds(earlier, tmp_path):
    runs, overrides, history = earlier
    here = other_runs(tmp_path, runs)
    assert reuse(runs / "old", here, 2, overrides) == history
    assert reuse(runs / "old", here, 1, overrides) == history[:2]
    with pytest.raises(ReuseError, match="has run 2 of the 3 rounds: resume it first"):
        reuse(runs / "old", here, 3, overrides)


def test_another_config_base_scaffold_or_data_is_refused(earlier, tmp_path):
    runs, overrides, history = earlier
    here = other_runs(tmp_path, runs)
    with pytest.raises(ReuseError, match=r"researcher {'name': 'random'}, wanted {'name': 'tpe'.*}; seed 0, wanted 1"):
        reuse(runs / "old", here, 2, ["seed=1", "researcher=tpe", *overrides[2:]])

    base = Path(next(o for o in overrides if o.startswith("base_model="))[len("base_model="):])
    copy = shutil.copytree(base, tmp_path / "base")
    assert reuse(runs / "old", here, 2, [*overrides, f"base_model={copy}"]) == history  # the same policy
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ReuseError, match=f"base policy .*, wanted that of {copy}: .*model.safetensors:"):
        reuse(runs / "old", here, 2, [*overrides, f"base_model={copy}"])

    scaffold = Path(next(o for o in overrides if o.startswith("scaffold="))[len("scaffold="):])
    changed = shutil.copytree(scaffold, tmp_path / "scaffold")
    (changed / "reward.py").write_text((changed / "reward.py").read_text() + "\n# changed\n")
    with pytest.raises(ReuseError, match="initial scaffold, wanted the files of"):
        reuse(runs / "old", here, 2, [*overrides, f"scaffold={changed}"])

    manifest = manifest_of(here, overrides)
    recorded = json.loads(manifest.read_text())
    recorded["hashes"]["eval"] = "0" * 64
    manifest.write_text(json.dumps(recorded))
    with pytest.raises(ReuseError, match=r"data splits of .* differ \(eval\)"):
        reuse(runs / "old", here, 2, overrides)


def test_a_folder_that_is_no_campaign_or_has_damaged_data_says_so(earlier, tmp_path):
    runs, overrides, history = earlier
    with pytest.raises(ReuseError, match="not a campaign folder"):
        reuse(tmp_path, tmp_path / "runs", 2, overrides)
    # a new runs folder gets the splits a campaign there would build, and they are the same
    assert reuse(runs / "old", tmp_path / "empty", 2, overrides) == history
    assert manifest_of(tmp_path / "empty", overrides).is_file()
    manifest_of(tmp_path / "empty", overrides).write_text("{")
    with pytest.raises(ReuseError, match="no readable data manifest"):
        reuse(runs / "old", tmp_path / "empty", 2, overrides)


def test_reuse_items_are_parsed_and_checked_against_what_the_bench_runs():
    assert parse_reuse(["local:0=a/b", "tpe:2=c"], ["local", "tpe"], [0, 1, 2]) == {
        ("local", 0): Path("a/b"), ("tpe", 2): Path("c")}
    for item in ["local=a", "local:x=a", "local:0=", ":0=a"]:
        with pytest.raises(ReuseError, match="write GROUP:SEED=PATH"):
            parse_reuse([item], ["local"], [0])
    with pytest.raises(ReuseError, match="cmaes:0 is not run here"):
        parse_reuse(["cmaes:0=a"], ["local"], [0])
    with pytest.raises(ReuseError, match="local:3 is not run here"):
        parse_reuse(["local:3=a"], ["local"], [0])


def test_a_damaged_campaign_folder_says_what_is_wrong(earlier, tmp_path):
    runs, overrides, _ = earlier
    here = other_runs(tmp_path, runs)
    broken = shutil.copytree(runs / "old", tmp_path / "broken", ignore=shutil.ignore_patterns("rounds"))
    with pytest.raises(ReuseError, match="no baseline result to compare its scaffold with"):
        reuse(broken, here, 2, overrides)
    (broken / "config.yaml").write_text("seed: [not a seed\n")
    with pytest.raises(ReuseError, match="config.yaml"):
        reuse(broken, here, 2, overrides)


def test_a_record_outlives_its_campaign_and_is_checked_alike(earlier, tmp_path):
    runs, overrides, history = earlier
    here = other_runs(tmp_path, runs)
    folder = shutil.copytree(runs / "old", tmp_path / "old")
    record = write_record(folder, tmp_path / "records" / "old.json")
    shutil.rmtree(folder)
    assert reuse(record, here, 2, overrides) == history
    assert reuse(record, here, 1, overrides) == history[:2]
    with pytest.raises(ReuseError, match="has run 2 of the 3 rounds"):
        reuse(record, here, 3, overrides)
    with pytest.raises(ReuseError, match=r"old.json is another campaign: .*seed 0, wanted 1"):
        reuse(record, here, 2, ["seed=1", *overrides[1:]])
    # A campaign scored on another split size is another campaign; a record older than the key was
    # scored on the size of its time, 200.
    with pytest.raises(ReuseError, match=r"old.json is another campaign: split_size 800, wanted 200"):
        reuse(record, here, 2, [*overrides, "split_size=200"])
    older = json.loads(record.read_text())
    del older["config"]["split_size"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    with pytest.raises(ReuseError, match=r"older.json is another campaign: split_size 200, wanted 800"):
        reuse(tmp_path / "older.json", here, 2, overrides)

    # The training cache's limit changes no result: a record from before the key is the same
    # campaign with any limit, or none.
    older["config"]["split_size"] = 800
    older["config"]["runner"].pop("cache_gb", None)
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert reuse(tmp_path / "older.json", here, 2, overrides) == history
    assert reuse(tmp_path / "older.json", here, 2, [*overrides, "runner.cache_gb=20"]) == history

    # An option whose default changed how a researcher works: a record from before it ran without it.
    local = {k: v for k, v in compose_config(["researcher=local"])["researcher"].items() if k != "interior_first"}
    older["config"]["researcher"] = local
    (tmp_path / "older.json").write_text(json.dumps(older))
    as_local = [o if o != "researcher=random" else "researcher=local" for o in overrides]
    with pytest.raises(ReuseError, match=r"researcher {.*'interior_first': False}, wanted {.*'interior_first': True}"):
        reuse(tmp_path / "older.json", here, 2, as_local)
    assert reuse(tmp_path / "older.json", here, 2, [*as_local, "researcher.interior_first=false"]) == history

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReuseError, match="bad.json: not a readable campaign record"):
        reuse(tmp_path / "bad.json", here, 2, overrides)
    (tmp_path / "bad.json").write_text(json.dumps({"campaign": "old", "history": []}))
    with pytest.raises(ReuseError, match="bad.json: not a campaign record .missing base, config, data, scaffold"):
        reuse(tmp_path / "bad.json", here, 2, overrides)
    (tmp_path / "bad.json").write_text(json.dumps({"campaign": "old", "config": {}, "base": "", "data": {},
                                                   "scaffold": "", "history": [{"accuracy": 0.1}]}))
    with pytest.raises(ReuseError, match="bad.json: a damaged campaign record"):
        reuse(tmp_path / "bad.json", here, 2, overrides)
