"""One untrusted job, run inside the sandbox in a process forked for it (rl_pipeline.zygote).

The only code that imports a scaffold's files. It reads what the trusted side copied into the job
folder and writes data only:

    in/request.json    task, knob overrides, the questions to format (no answers), whether to
                       train, the training budget (completions) and seed
    in/scaffold/       the scaffold's files
    in/base/           the base policy (only when training)
    in/train.jsonl     the training examples (only when training)
    out/prompts.json   {split: [prompt string per question]}
    out/policy/        model.safetensors + config.json + training.json (only when training)
    out/error.json     {"reason", "traceback"} when the job failed

The trusted side (rl_pipeline.worker) checks all of it before using any of it.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import torch
import datasets  # noqa: F401 - imported here so the fork server holds it warm

from trl import GRPOConfig, GRPOTrainer  # noqa: F401 - imported here so the fork server holds them warm

from rl_pipeline.scaffold import load_scaffold
from rl_pipeline.train import train_grpo


def run(job_dir: str, *, threads: int) -> int:
    """Do the job in `job_dir`; 0 when out/ holds the outputs, 1 when out/error.json says why."""
    job = Path(job_dir)
    out = job / "out"
    try:
        torch.set_num_threads(threads)
        request = json.loads((job / "in" / "request.json").read_text())
        scaffold = load_scaffold(job / "in" / "scaffold", request["overrides"])
        prompts = {}
        for split, questions in request["questions"].items():
            prompts[split] = [scaffold.prompt.format_prompt(q) for q in questions]
        if request["train"]:
            rows = [json.loads(line) for line in (job / "in" / "train.jsonl").read_text().splitlines()]
            tmp = out / ".policy"
            summary = train_grpo(scaffold, base_dir=str(job / "in" / "base"), train_split=rows,
                                 out_dir=str(tmp), completions=request["completions"], seed=request["seed"])
            (tmp / "training.json").write_text(json.dumps(summary))
            os.replace(tmp, out / "policy")
        (out / "prompts.json").write_text(json.dumps(prompts))
        return 0
    except Exception as err:  # the reason goes back as data; the trusted side decides what it means
        (out / "error.json").write_text(json.dumps({"reason": f"{type(err).__name__}: {err}",
                                                    "traceback": traceback.format_exc()}))
        return 1
