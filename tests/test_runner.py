"""The runner end to end: the real warm worker and sandbox, real GRPO steps, real results.

A tiny random-weight base policy stands in for the pretrained one (the runner's behaviour, not
the policy's skill, is under test); training is cut to a budget of 16 completions (two steps at
the default batch) to keep the suite fast.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from fast_scaffold import COMPLETIONS, TEST_PRESET, with_budget

from model import build_policy, build_tokenizer, save_policy
from rl_pipeline.run import expected_work_s, run_scaffold

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
FAST = {"sampling.max_new_tokens": 6, "grpo.max_completion_length": 6}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, root / "base")
    return {"base": str(root / "base"), "data_dir": str(root / "data"), "cache_dir": str(root / "cache"),
            "seeds": [0], "timeout_s": 300.0}


def scaffold_with(tmp_path, reward_body: str | None = None) -> Path:
    dst = tmp_path / "scaffold"
    shutil.copytree(ARITH, dst)
    with_budget(dst, COMPLETIONS)
    if reward_body is not None:
        (dst / "reward.py").write_text(reward_body)
    return dst


def test_ok_result_and_training_cache(tmp_path, env):
    scaffold = scaffold_with(tmp_path)
    training_s = expected_work_s(scaffold, overrides=FAST, **env)
    first = run_scaffold(scaffold, tmp_path / "a", overrides=FAST, **env)
    assert first["status"] == "ok", first.get("reason")
    assert first["schema_version"] == 1 and not first["training"]["cached"]
    training = first["training"]
    assert (training["steps"], training["completions"], training["budget_completions"], training["train_seed"]) \
        == (2, 16, 16, 0)
    assert len(first["per_example"]) == first["num_examples"] == 200
    assert all(len(v) == 1 for v in first["per_example"].values())
    m = first["metrics"]
    assert 0.0 <= m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1] <= 1.0
    assert first["scaffold"]["content_hash"] and first["data_hashes"]["eval"]
    samples = (tmp_path / "a" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 200 and "completion" in json.loads(samples[0])

    # A sampling-only change reuses the trained policy; a training knob retrains.
    second = run_scaffold(scaffold, tmp_path / "b", overrides=FAST | {"sampling.temperature": 0.5}, **env)
    assert second["status"] == "ok" and second["training"]["cached"]
    assert second["training"]["key"] == first["training"]["key"]
    # How far training moved the weights, measured by the trusted side when it cached them, and for
    # a policy cached before the measure, measured when it is read.
    moved = first["training"]["weight_change"]
    assert 0 < moved < 0.01 and second["training"]["weight_change"] == moved
    cached = Path(env["cache_dir"]) / first["training"]["key"] / "training.json"
    summary = json.loads(cached.read_text())
    cached.write_text(json.dumps({k: v for k, v in summary.items() if k != "weight_change"}))
    older = run_scaffold(scaffold, tmp_path / "b2", overrides=FAST | {"sampling.temperature": 0.4}, **env)
    assert older["training"]["cached"] and older["training"]["weight_change"] == pytest.approx(moved, rel=1e-9)
    # ... once: the entry's record now holds it, the rest of the record as it was
    assert json.loads(cached.read_text()) == summary | {"weight_change": older["training"]["weight_change"]}
    # The estimate that orders runs sharing workers (longest first) knows which will train.
    scoring_s = expected_work_s(scaffold, overrides=FAST | {"sampling.temperature": 0.5}, **env)
    assert 0 < scoring_s < training_s
    assert expected_work_s(scaffold, overrides=FAST | {"grpo.learning_rate": 1e-5}, **env) == training_s
    assert expected_work_s(scaffold, overrides=FAST, **env | {"train_seed": 7}) == training_s
    assert expected_work_s(scaffold, overrides={"sampling.top_p": 3}, **env) == 0  # fails at once
    third = run_scaffold(scaffold, tmp_path / "c", overrides=FAST | {"grpo.learning_rate": 1e-5}, **env)
    assert expected_work_s(scaffold, overrides=FAST | {"grpo.learning_rate": 1e-5}, **env) == scoring_s
    assert third["status"] == "ok" and not third["training"]["cached"]
    assert third["training"]["weight_change"] > 3 * moved  # ten times the rate, the same two steps

    # The budget is work, not time: twice the completions is twice the steps at the same batch, and
    # a batch twice as large spends the same budget in half the steps. It is in the cache key too.
    with_budget(scaffold, 2 * COMPLETIONS)
    fourth = run_scaffold(scaffold, tmp_path / "d", overrides=FAST, **env)
    assert fourth["status"] == "ok" and not fourth["training"]["cached"]
    assert (fourth["training"]["steps"], fourth["training"]["completions"]) == (4, 32)
    fifth = run_scaffold(scaffold, tmp_path / "e", overrides=FAST | {"grpo.per_device_train_batch_size": 16}, **env)
    assert (fifth["training"]["steps"], fifth["training"]["completions"]) == (2, 32)


def test_a_fresh_training_seed_retrains_and_is_reported(tmp_path, env):
    scaffold = scaffold_with(tmp_path)
    first = run_scaffold(scaffold, tmp_path / "a", overrides=FAST, **env)
    again = run_scaffold(scaffold, tmp_path / "b", overrides=FAST, **env | {"train_seed": 1})
    assert again["status"] == "ok" and not again["training"]["cached"] and again["training"]["train_seed"] == 1
    assert again["training"]["key"] != first["training"]["key"]


def test_max_steps_is_no_longer_a_knob(tmp_path, env):
    result = run_scaffold(scaffold_with(tmp_path), tmp_path / "out", overrides={"grpo.max_steps": 20}, **env)
    assert result["status"] == "failed" and "unknown knob 'grpo.max_steps'" in result["reason"]


BROKEN_REWARDS = {
    "syntax": ("def rewards(:\n", "reward.py: syntax error on line 1"),
    "raises": ("def rewards(c, e, s, w):\n    raise KeyError('nope')\n", "rewards() raised KeyError"),
    "nan": ("def rewards(c, e, s, w):\n    return [float('nan')] * len(c)\n", "non-finite"),
    "length": ("def rewards(c, e, s, w):\n    return [1.0, 2.0, 3.0]\n", "returned 3 values for 8 completions"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_REWARDS))
def test_broken_reward_is_a_failed_result(tmp_path, env, case):
    body, reason = BROKEN_REWARDS[case]
    cache_before = sorted(os.listdir(env["cache_dir"])) if os.path.isdir(env["cache_dir"]) else []
    result = run_scaffold(scaffold_with(tmp_path, body), tmp_path / "out", overrides=FAST, **env)
    assert result["status"] == "failed"
    assert reason in result["reason"]
    assert result["traceback"]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "failed"
    cache_after = sorted(os.listdir(env["cache_dir"])) if os.path.isdir(env["cache_dir"]) else []
    assert cache_after == cache_before  # no entry, no half-written temp folder


def test_bad_knob_and_missing_file(tmp_path, env):
    result = run_scaffold(scaffold_with(tmp_path), tmp_path / "knob", overrides={"sampling.top_p": 3}, **env)
    assert result["status"] == "failed" and "sampling.top_p: 3.0 is above the maximum 1.0" in result["reason"]
    scaffold = scaffold_with(tmp_path / "x")
    (scaffold / "prompt.py").unlink()
    result = run_scaffold(scaffold, tmp_path / "missing", **env)
    assert result["status"] == "failed" and "missing file prompt.py" in result["reason"]


def test_hang_is_killed_and_secrets_are_scrubbed(tmp_path, env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    scaffold = scaffold_with(tmp_path / "env")
    (scaffold / "prompt.py").write_text("import json, os\nraise RuntimeError('ENV' + json.dumps(sorted(os.environ)))\n")
    result = run_scaffold(scaffold, tmp_path / "env-out", overrides=FAST, **env)
    names = json.loads(result["reason"].split("ENV", 1)[1])
    assert "OPENAI_API_KEY" not in names and "HF_TOKEN" not in names and "HF_HUB_OFFLINE" in names

    body = "import time\ndef rewards(c, e, s, w):\n    time.sleep(3600)\n"
    start = time.monotonic()
    result = run_scaffold(scaffold_with(tmp_path, body), tmp_path / "out", overrides=FAST,
                          **env | {"timeout_s": 20.0})
    assert time.monotonic() - start < 60
    assert result["status"] == "failed" and "timed out after 20s" in result["reason"]


def test_missing_base_policy(tmp_path, env):
    result = run_scaffold(scaffold_with(tmp_path), tmp_path / "out", **env | {"base": str(tmp_path / "none")})
    assert result["status"] == "failed" and "researcher model pretrain" in result["reason"]


def test_calibration_scores_the_calibration_split_in_a_part_of_its_own(tmp_path, env):
    from rl_pipeline.data import load_splits, split_hash

    scaffold = scaffold_with(tmp_path)
    plain = run_scaffold(scaffold, tmp_path / "a", overrides=FAST, **env)
    both = run_scaffold(scaffold, tmp_path / "b", overrides=FAST, calibration=True, **env | {"seeds": [0, 1]})
    assert both["status"] == "ok", both.get("reason")
    assert "calibration" not in plain and both["training"]["cached"]
    part, splits = both["calibration"], load_splits("arith", data_dir=env["data_dir"])
    assert part["seeds"] == [0, 1] and part["data_hash"] == split_hash(splits["calibration"])
    assert sorted(part["per_example"]) == sorted(splits["calibration"]["id"])
    assert all(len(scores) == 2 for scores in part["per_example"].values())
    assert {i: s[0] for i, s in both["per_example"].items()} == {i: s[0] for i, s in plain["per_example"].items()}
    assert both["data_hashes"] == plain["data_hashes"]  # the result still pairs with results made without it


def test_a_heldout_only_run_scores_heldout_alone_with_the_scores_of_a_whole_run(tmp_path, env):
    """A held-out run for the record needs no eval scores (another run has them): without
    `score_eval` it scores held-out only, the same held-out scores as a run that scores both,
    in the time the held-out split takes; a run asked to score nothing is refused."""
    scaffold = scaffold_with(tmp_path)
    both = run_scaffold(scaffold, tmp_path / "both", overrides=FAST, heldout=True, **env | {"seeds": [0, 1]})
    alone = run_scaffold(scaffold, tmp_path / "alone", overrides=FAST, heldout=True, score_eval=False,
                         **env | {"seeds": [0, 1]})
    assert alone["status"] == "ok", alone.get("reason")
    assert alone["training"]["cached"] and alone["training"]["key"] == both["training"]["key"]
    assert alone["heldout"] == both["heldout"]
    assert not {"metrics", "per_example", "failures", "num_examples"} & set(alone)
    assert "eval_s" not in alone["timings"] and "heldout_s" in alone["timings"]
    assert not (tmp_path / "alone" / "samples.jsonl").exists()  # eval's records: none were made
    assert alone["data_hashes"] == both["data_hashes"]  # it pairs with the baseline's data as any run
    assert json.loads((tmp_path / "alone" / "job.json").read_text())["limits"]["total_s"] \
        < json.loads((tmp_path / "both" / "job.json").read_text())["limits"]["total_s"]
    assert expected_work_s(scaffold, overrides=FAST, heldout=True, score_eval=False, **env) \
        < expected_work_s(scaffold, overrides=FAST, heldout=True, **env)
    with pytest.raises(ValueError, match="at least one split"):
        run_scaffold(scaffold, tmp_path / "none", overrides=FAST, score_eval=False, **env)
