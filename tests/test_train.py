"""GRPO training guards: the budget of completions, divergence detection, and the reward bridge to TRL."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from rl_pipeline.scaffold import load_scaffold
from rl_pipeline.train import Divergence, TrainingFailed, completions_per_step, grpo_config, make_reward_func

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
COLUMNS = {"id": ["a", "b"], "task": ["arith", "arith"], "question": ["2 + 3", "4 * 5"],
           "answer": ["5", "20"], "meta": [{}, {}]}


def test_nan_loss_fails():
    callback = Divergence()
    control = SimpleNamespace(should_training_stop=False)
    state = SimpleNamespace(global_step=3)
    callback.on_log(None, state, control, logs={"loss": 0.5})
    assert callback.losses == [0.5]
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
    config = grpo_config(scaffold, "/tmp/unused", seed=1, completions=768)
    assert (config.learning_rate, config.beta, config.temperature) == (3e-5, 0.04, 0.7)
    assert not config.bf16 and config.loss_type == "dapo"


@pytest.mark.parametrize("batch, generations, completions, steps", [
    (8, 8, 768, 96), (16, 8, 768, 48), (8, 2, 768, 96), (16, 4, 100, 6)])
def test_the_budget_of_completions_sets_the_steps(batch, generations, completions, steps):
    """Whatever the batch and the group size, the steps spend the budget and never more."""
    scaffold = load_scaffold(ARITH, {"grpo.per_device_train_batch_size": batch, "grpo.num_generations": generations})
    config = grpo_config(scaffold, "/tmp/unused", seed=0, completions=completions)
    assert config.max_steps == steps and completions_per_step(config) == batch
    with pytest.raises(TrainingFailed, match="budget of 4 completions is less than one optimizer step"):
        grpo_config(scaffold, "/tmp/unused", seed=0, completions=4)


def test_completions_per_step_follows_trl_semantics():
    """One generation batch serves steps_per_generation x num_iterations micro-batches; an
    optimizer step takes gradient_accumulation_steps of them."""
    from trl import GRPOConfig

    common = {"output_dir": "/tmp/unused", "use_cpu": True, "per_device_train_batch_size": 8, "num_generations": 8}
    assert completions_per_step(GRPOConfig(**common, gradient_accumulation_steps=2)) == 16
    assert completions_per_step(GRPOConfig(**common, gradient_accumulation_steps=2, num_iterations=2)) == 8
    assert completions_per_step(GRPOConfig(**common, generation_batch_size=32)) == 8

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
    assert grpo_config(load_scaffold(ARITH), "/tmp/unused", seed=0, completions=768).use_cpu


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_grpo_config_on_the_gpu():
    assert not grpo_config(load_scaffold(ARITH), "/tmp/unused", seed=0, completions=768).use_cpu
