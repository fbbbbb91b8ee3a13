"""Pretraining speed: today's step against the step before issue 15, side by side on the same data.

    .venv/bin/python bench/pretrain.py [--steps 120] [--threads 2] [--data-dir runs/data]

Two tiny policies start from the same seed and see the same batches of the real corpus under the
same learning-rate schedule (that of the 1500-step base), each in its own process (OpenMP's set-up
is fixed when a process loads it), one optimizer step each in turn (which goes first alternates;
the other waits), so load from elsewhere hits both alike:

- before: the step as `researcher model pretrain` ran it before this work: an attention mask over
  the right padding, AdamW's per-parameter loop, gradient clipping's per-parameter loop, the
  grouped experts kernel in training, and OpenMP's idle threads sleeping at once (PASSIVE);
- now: `model.pretrain.train_step` with `make_optimizer`, in the environment `pretrain_base` gives
  its child: idle threads that spin a little where the cores were idle when it started.

Printed: how the cores were found and each child's OpenMP waiting, the median seconds per step of
each, wall clock and CPU time of its process (on a machine that other jobs share, CPU time is the
steadier measure of the work), their ratio (target >= 2x: the same base in half the time), the loss
of each after the same steps (the math is the same up to rounding, so the curves should agree),
and the time each took to reach the higher of the two final losses: time to the same loss.
`--steps` shorter than the real 1500 is enough: the per-step cost does not change with the step
number.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

import torch

import model.experts
from model import build_policy, build_tokenizer
from model.pretrain import (PretrainConfig, _batch, _shuffled_batches, encode_pairs, lr_schedule, make_optimizer,
                            train_step)
from rl_pipeline.corpus import pretrain_pairs, tokenizer_texts
from rl_pipeline.env import idle_cores_env, scrubbed_env, use_offline_env

TARGET = 2.0
VARIANTS = ("before", "now")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps of each variant")
    parser.add_argument("--threads", type=int, default=PretrainConfig.threads, help="torch intra-op threads")
    parser.add_argument("--data-dir", default="runs/data", help="where the task splits are cached")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant's process
    return parser


# ---- the step before this work -----------------------------------------------------------------

def before_step(policy, optimizer, scheduler, input_ids, labels, pad_id) -> float:
    attention = (labels != -100) | (input_ids != pad_id)  # the mask the old `_batch` built
    old_threshold = model.experts._STREAM_MIN_ROWS
    model.experts._STREAM_MIN_ROWS = 10**12  # the grouped kernel only, as before
    try:
        loss = policy(input_ids=input_ids, attention_mask=attention.long(), labels=labels).loss
        loss.backward()
    finally:
        model.experts._STREAM_MIN_ROWS = old_threshold
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0, foreach=False)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def old_mask_matches(encoded, indices, pad_id) -> bool:
    """The mask `before_step` rebuilds is the old `_batch`'s: ones over each row's tokens."""
    input_ids, labels = _batch(encoded, indices, pad_id)
    rebuilt = (labels != -100) | (input_ids != pad_id)
    lengths = torch.tensor([len(encoded[i][0]) for i in indices])
    return bool((rebuilt == (torch.arange(input_ids.shape[1]) < lengths[:, None])).all())


# ---- main ----------------------------------------------------------------------------------------

def smoothed(losses: list[float], window: int = 20) -> list[float]:
    return [statistics.fmean(losses[max(0, i + 1 - window): i + 1]) for i in range(len(losses))]


def time_to(loss_curve: list[float], seconds: list[float], target: float) -> float:
    """Seconds until the curve first reaches `target` (which its last point does)."""
    total = 0.0
    for loss, s in zip(loss_curve, seconds):
        total += s
        if loss <= target:
            break
    return total


def child(args) -> None:
    """One variant's process: one optimizer step per line read from stdin, and for each a line
    "@seconds cpu-seconds loss" on stdout."""
    torch.set_num_threads(args.threads)
    config = PretrainConfig()
    pairs = pretrain_pairs(args.data_dir)
    tokenizer = build_tokenizer(tokenizer_texts(pairs), vocab_size=config.vocab_size)
    encoded = encode_pairs(tokenizer, pairs)
    pad_id = tokenizer.pad_token_id
    policy = build_policy(config.preset, tokenizer, seed=config.seed).train()
    if args.child == "before":
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay, betas=(0.9, 0.95))
    else:
        optimizer = make_optimizer(policy, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    batches = _shuffled_batches(encoded, config.batch_size, random.Random(config.seed))
    print("@ready", flush=True)
    for step, _ in enumerate(sys.stdin):
        indices = next(batches)
        if step == 0 and args.child == "before" and not old_mask_matches(encoded, indices, pad_id):
            raise RuntimeError("before_step's mask is not the old _batch's")
        input_ids, labels = _batch(encoded, indices, pad_id)
        start, cpu_start = time.perf_counter(), time.process_time()
        if args.child == "before":
            loss = before_step(policy, optimizer, scheduler, input_ids, labels, pad_id)
        else:
            loss = train_step(policy, optimizer, scheduler, input_ids, labels)
        print(f"@{time.perf_counter() - start} {time.process_time() - cpu_start} {loss}", flush=True)


def _reply(proc: subprocess.Popen, name: str) -> list[str]:
    """The child's next "@" line, split."""
    for line in proc.stdout:
        if line.startswith("@"):
            return line[1:].split()
    raise RuntimeError(f"the {name} child ended (exit status {proc.wait()}): its error is above")


def main(argv=None) -> float:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args)
        return 0.0
    base = scrubbed_env() | {"PYTHONPATH": os.pathsep.join(sys.path)}
    now_env, free = idle_cores_env(base, args.threads)
    envs = {"before": {k: v for k, v in base.items() if k != "GOMP_SPINCOUNT"} | {"OMP_WAIT_POLICY": "PASSIVE"},
            "now": now_env}
    print(f"pretraining step, tiny preset, batch {PretrainConfig.batch_size}, {args.steps} steps each, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}, "
          f"{'?' if free is None else f'{free:.1f}'} cores idle before")
    procs = {}
    for name in VARIANTS:
        procs[name] = subprocess.Popen(
            [sys.executable, "-P", __file__, "--child", name, "--threads", str(args.threads),
             "--data-dir", args.data_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=envs[name])
        _reply(procs[name], name)
        env = envs[name]
        print(f"  {name}: OpenMP's idle threads {env.get('OMP_WAIT_POLICY') or 'spin ' + env['GOMP_SPINCOUNT']}")
    runs = {name: dict(losses=[], seconds=[], cpu=[]) for name in VARIANTS}
    try:
        for step in range(args.steps):
            for name in (VARIANTS[::-1] if step % 2 else VARIANTS):
                procs[name].stdin.write("step\n")
                procs[name].stdin.flush()
                seconds, cpu, loss = (float(v) for v in _reply(procs[name], name))
                runs[name]["seconds"].append(seconds)
                runs[name]["cpu"].append(cpu)
                runs[name]["losses"].append(loss)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()

    skip = min(5, args.steps - 1)  # warm-up steps
    median = {name: statistics.median(run["seconds"][skip:]) for name, run in runs.items()}
    cpu = {name: statistics.median(run["cpu"][skip:]) for name, run in runs.items()}
    curves = {name: smoothed(run["losses"]) for name, run in runs.items()}
    target = max(curve[-1] for curve in curves.values())
    ratio, cpu_ratio = median["before"] / median["now"], cpu["before"] / cpu["now"]
    print(f"{'':8s}{'s/step':>9s}{'CPU s/step':>12s}{'1500 steps':>12s}{'loss (20-step mean)':>22s}"
          f"{'time to loss':>14s}")
    reach = {}
    for name in runs:
        reach[name] = time_to(curves[name], runs[name]["seconds"], target)
        print(f"{name:8s}{median[name]:9.3f}{cpu[name]:12.3f}{1500 * median[name] / 60:9.1f}min"
              f"{curves[name][-1]:22.4f}{reach[name]:13.1f}s")
    print(f"speedup: {ratio:.2f}x per step ({cpu_ratio:.2f}x in CPU time), {reach['before'] / reach['now']:.2f}x "
          f"to the loss {target:.4f} (target >= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'not met'})")
    return ratio


if __name__ == "__main__":
    use_offline_env()
    main()
