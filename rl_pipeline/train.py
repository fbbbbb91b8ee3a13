"""GRPO training of the base policy with TRL's `GRPOTrainer`, under a scaffold's knobs.

The scaffold supplies the hyperparameters (rollouts sample at `grpo.temperature`, TRL's other
rollout defaults unchanged; the `sampling` knobs are for evaluation only, so changing them never
retrains), the prompt format, the reward shaping and, where it has a `data.py`, which training
examples GRPO meets in which order (`training_rows`); the fixed scorer supplies correctness.
Rollouts go through our fast generation (installed as the policy's `generate`, which is what TRL
calls). Every run gets the same amount of work, whatever the machine or its load: a budget of
training completions (the scaffold's `budget.train_completions`), from which the number of
optimizer steps follows, so a change wins by a better recipe, not by more compute. A non-finite
loss or reward stops the run with a precise reason.

    summary = train_grpo(scaffold, base_dir="runs/models/base", out_dir=..., completions=768)
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback

from model import default_device, load_policy, load_tokenizer, save_policy
from model.generate import use_fast_generate
from rl_pipeline.tasks import get_task


MAX_REPEAT = 10  # data.py may return each example this many times over, on average


class TrainingFailed(RuntimeError):
    """Training could not finish: divergence, a broken reward, or the like (message says which)."""


class Divergence(TrainerCallback):
    """Fail on a non-finite loss; keep the losses logged."""

    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None:
            if not math.isfinite(loss):
                raise TrainingFailed(f"training diverged: loss={loss} at step {state.global_step}")
            self.losses.append(float(loss))
        return control


def _meter_rollouts(policy) -> dict:
    """Wrap the policy's generate to add up what TRL's rollouts cost: seconds and completions."""
    meter, inner = {"seconds": 0.0, "completions": 0}, policy.generate

    def metered_generate(*args, **kwargs):
        start = time.perf_counter()
        try:
            rows = inner(*args, **kwargs)
        finally:
            meter["seconds"] += time.perf_counter() - start
        meter["completions"] += len(rows)
        return rows

    policy.generate = metered_generate
    return meter


def make_reward_func(scaffold):
    """A TRL reward function: the fixed scorer judges, the scaffold's reward.py shapes."""
    task = get_task(scaffold.task)
    weights = dict(scaffold.config["reward"])

    def scaffold_reward(prompts, completions, **columns) -> list[float]:
        examples = [
            {"id": i, "task": t, "question": q, "answer": a, "meta": m}
            for i, t, q, a, m in zip(columns["id"], columns["task"], columns["question"],
                                     columns["answer"], columns["meta"])
        ]
        scores = [task.score(c, ex) for c, ex in zip(completions, examples)]
        try:
            rewards = scaffold.reward.rewards(list(completions), examples, scores, weights)
        except Exception as err:
            raise TrainingFailed(f"reward.py: rewards() raised {type(err).__name__}: {err}") from err
        if not isinstance(rewards, (list, tuple)) or len(rewards) != len(completions):
            got = len(rewards) if isinstance(rewards, (list, tuple)) else type(rewards).__name__
            raise TrainingFailed(f"reward.py: rewards() returned {got} values for {len(completions)} completions")
        out = []
        for value in rewards:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TrainingFailed(f"reward.py: rewards() returned a non-finite or non-numeric value {value!r}")
            out.append(float(value))
        return out

    scaffold_reward.__name__ = "scaffold_reward"
    return scaffold_reward


def training_rows(scaffold, rows: list[dict], seed: int) -> tuple[list[dict], bool]:
    """The training examples in the order GRPO is to meet them, and whether TRL is to shuffle them.

    Without a `data.py`, all of them, shuffled by TRL. With one, its `training_examples(examples,
    rng)` (a copy of the examples, `random.Random(seed)`) returns a non-empty list of them, repeats
    allowed, in the order training takes them (the budget reaches only the first ones); each is
    matched back by its `id` to the example as given, so selection cannot change an answer, and
    nothing outside the training split can be trained on."""
    if scaffold.data is None:
        return rows, True
    by_id = {row["id"]: row for row in rows}
    try:
        chosen = scaffold.data.training_examples(json.loads(json.dumps(rows)), random.Random(seed))
    except Exception as err:
        raise TrainingFailed(f"data.py: training_examples() raised {type(err).__name__}: {err}") from err
    if not isinstance(chosen, (list, tuple)) or not chosen:
        got = "an empty list" if isinstance(chosen, (list, tuple)) else f"a {type(chosen).__name__}"
        raise TrainingFailed(f"data.py: training_examples() returned {got}; it must return a non-empty list of "
                             "the examples it was given")
    if len(chosen) > MAX_REPEAT * len(rows):
        raise TrainingFailed(f"data.py: training_examples() returned {len(chosen)} examples for {len(rows)} given "
                             f"(at most {MAX_REPEAT} times as many)")
    out = []
    for i, example in enumerate(chosen):
        key = example.get("id") if isinstance(example, dict) else None
        row = by_id.get(key) if isinstance(key, str) else None
        if row is None:
            raise TrainingFailed(f"data.py: training_examples() returned, at position {i}, something that is not "
                                 "one of the training examples it was given (matched by 'id')")
        out.append(row)
    return out, False


def completions_per_step(config) -> float:
    """Completions TRL generates per optimizer step under `config` (a GRPOConfig, resolved): one
    generation batch serves `steps_per_generation` x `num_iterations` micro-batches, and a step
    takes `gradient_accumulation_steps` of them. With TRL's defaults it is the batch size."""
    per_micro_batch = config.generation_batch_size / (config.steps_per_generation * config.num_iterations)
    return per_micro_batch * config.gradient_accumulation_steps


def grpo_config(scaffold, output_dir: str, seed: int, completions: int, device: str | None = None,
                shuffle: bool = True):
    """TRL's GRPOConfig from the scaffold's knobs, with as many optimizer steps as `completions`
    (the training budget) pays for; fp32 on `device` (the GPU where there is one, else the CPU),
    the examples shuffled or taken in order (`shuffle`), no checkpoints, no reporting."""
    from trl import GRPOConfig

    grpo = scaffold.config["grpo"]
    device = device or default_device()
    config = GRPOConfig(
        output_dir=output_dir,
        use_cpu=device == "cpu",
        bf16=False,
        seed=seed,
        learning_rate=grpo["learning_rate"],
        beta=grpo["beta"],
        num_generations=grpo["num_generations"],
        per_device_train_batch_size=grpo["per_device_train_batch_size"],
        epsilon=grpo["epsilon"],
        loss_type=grpo["loss_type"],
        max_completion_length=grpo["max_completion_length"],
        temperature=grpo["temperature"],
        shuffle_dataset=shuffle,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    per_step = completions_per_step(config)
    config.max_steps = int(completions // per_step)
    if config.max_steps < 1:
        raise TrainingFailed(f"the training budget of {completions} completions is less than one optimizer "
                             f"step ({per_step:g} completions)")
    return config


def train_grpo(scaffold, *, base_dir: str, train_split, out_dir: str, completions: int, seed: int = 0) -> dict:
    """Train from `base_dir` on `train_split` until `completions` rollouts are spent; save the
    policy to `out_dir`; return a summary (steps and completions trained, losses, rewards, timings)."""
    from trl import GRPOTrainer

    torch.manual_seed(seed)
    device = default_device()
    tokenizer = load_tokenizer(base_dir)
    # TRL rebuilds a reference model from config._name_or_path when beta > 0: load from disk.
    # The trainer moves the policy to its device; loading it there spares a copy through the CPU.
    policy = load_policy(base_dir, device=device).train()
    use_fast_generate(policy)
    rollouts = _meter_rollouts(policy)

    rows, shuffle = training_rows(scaffold, list(train_split), seed)
    dataset = Dataset.from_list([
        {"prompt": scaffold.prompt.format_prompt(row["question"]), "id": row["id"], "task": row["task"],
         "question": row["question"], "answer": row["answer"], "meta": row["meta"]}
        for row in rows
    ])
    callback = Divergence()
    with tempfile.TemporaryDirectory(prefix="grpo-") as tmp:
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=[make_reward_func(scaffold)],
            args=grpo_config(scaffold, tmp, seed, completions, device, shuffle),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[callback],
        )
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
    history = [h for h in trainer.state.log_history if "loss" in h]
    save_policy(policy.eval(), tokenizer, out_dir)
    return {
        "device": device,
        "steps": trainer.state.global_step,
        "completions": rollouts["completions"],
        "final_loss": callback.losses[-1] if callback.losses else None,
        "mean_reward": [h.get("reward") for h in history],
        "timings": {"train_total_s": round(train_seconds, 3), "rollout_s": round(rollouts["seconds"], 3),
                    "training_steps_s": round(train_seconds - rollouts["seconds"], 3)},
    }
