"""GRPO training guards: the time budget, divergence detection, and the reward bridge to TRL."""

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rl_pipeline.scaffold import load_scaffold
from rl_pipeline.train import BudgetAndDivergence, TrainingFailed, grpo_config, make_reward_func

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
COLUMNS = {"id": ["a", "b"], "task": ["arith", "arith"], "question": ["2 + 3", "4 * 5"],
           "answer": ["5", "20"], "meta": [{}, {}]}


def test_budget_stops_training_and_nan_loss_fails():
    callback = BudgetAndDivergence(budget_s=0.05)
    control = SimpleNamespace(should_training_stop=False)
    state = SimpleNamespace(global_step=3)
    callback.on_step_end(None, state, control)
    assert not control.should_training_stop
    time.sleep(0.06)
    callback.on_step_end(None, state, control)
    assert control.should_training_stop and callback.stopped_by_budget
    callback.on_log(None, state, control, logs={"loss": 0.5})
    with pytest.raises(TrainingFailed, match="diverged: loss=nan at step 3"):
        callback.on_log(None, state, control, logs={"loss": float("nan")})


def test_reward_uses_the_fixed_scorer_and_the_scaffold_weights():
    scaffold = load_scaffold(ARITH, {"reward.format": 0.5})
    reward = make_reward_func(scaffold)
    assert reward(["", ""], ["5", "19"], **COLUMNS) == [1.5, 0.5]  # correct+format, format only


def test_reward_that_returns_the_wrong_type(tmp_path):
    shutil.copytree(ARITH, tmp_path / "s")
    (tmp_path / "s" / "reward.py").write_text("def rewards(c, e, s, w):\n    return ['high'] * len(c)\n")
    reward = make_reward_func(load_scaffold(tmp_path / "s"))
    with pytest.raises(TrainingFailed, match="non-finite or non-numeric value 'high'"):
        reward(["", ""], ["5", "20"], **COLUMNS)


def test_grpo_config_follows_the_knobs():
    scaffold = load_scaffold(ARITH, {"grpo.learning_rate": 3e-5, "grpo.beta": 0.04, "grpo.temperature": 0.7})
    config = grpo_config(scaffold, "/tmp/unused", seed=1)
    assert (config.learning_rate, config.beta, config.temperature) == (3e-5, 0.04, 0.7)
    assert not config.bf16 and config.loss_type == "dapo" and config.max_steps == 20


def test_training_runs_on_the_gpu_where_there_is_one(monkeypatch, tmp_path):
    """The device follows `torch.cuda.is_available`; without a GPU, TRL is kept on the CPU, and
    `load_policy` puts a checkpoint where it is asked to."""
    import torch

    import model.presets
    from model import build_policy, build_tokenizer, load_policy, save_policy

    tokenizer = build_tokenizer()
    save_policy(build_policy("tiny", tokenizer), tokenizer, tmp_path / "m")
    loaded = load_policy(tmp_path / "m", device=model.presets.default_device())
    assert loaded.device.type == model.presets.default_device() and not loaded.training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model.presets.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model.presets.default_device() == "cpu"
    assert grpo_config(load_scaffold(ARITH), "/tmp/unused", seed=0).use_cpu


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_grpo_config_on_the_gpu():
    assert not grpo_config(load_scaffold(ARITH), "/tmp/unused", seed=0).use_cpu
