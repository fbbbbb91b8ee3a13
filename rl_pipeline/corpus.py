"""The supervised corpus the base policy is pretrained on, and the `pretrain` entry point.

Pairs are (prompt, answer) from the tasks' `train` splits, formatted by the default scaffold's
prompt.py (the format the loop starts from), so evaluation and held-out problems never leak in.
The tokenizer is trained on the same text plus the scaffolds' surface files, so proposals the
researcher writes later (knob names, JSON) tokenize compactly too.

Like a real pretrained model, the base learns the arithmetic but not the exact answer format: the
corpus writes each answer in one of several styles (`ANSWER_STYLES`: "168", "168 is the answer.",
"168."), of which only the bare number passes the strict scorer. Every style starts with the
number, so the arithmetic is learned in the same place whatever the style; what differs is
whether the answer line ends after it. The likeliest continuation after the number is the
suffix, so a greedy decoder always adds it and a sampled one ends the line in proportion: no
sampling setting fixes the format, while a reward that prefers well-formed answers can teach it.

Pretraining stops on a calibrated band, not a step count (`CALIBRATION`): every `every` steps the
policy answers the calibration split greedily and training stops once its answer accuracy (the
last integer of the answer line, whatever the style: the arithmetic, not the format) reaches the
band, so any machine starts the loop from a comparable policy.

    researcher model pretrain --out runs/models/base
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from rl_pipeline.data import load_splits
from rl_pipeline.env import die_with_parent, idle_cores_env, scrubbed_env
from rl_pipeline.files import file_lock, recover_dir, remove_stale, replacing_dir
from rl_pipeline.scaffold import import_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCAFFOLD = REPO / "scaffolds" / "arith"
# The share of each task's train split in the corpus. Countdown is left out: its long answers
# cost a fifth of the budget and slowed arith learning without making countdown solvable.
MIXTURE = {"arith": 1.0}
# How the corpus writes an answer, and each style's share. Only "bare" passes the strict scorer.
ANSWER_STYLES = {"bare": ("{answer}", 0.35), "suffix": ("{answer} is the answer.", 0.50),
                 "period": ("{answer}.", 0.15)}
# Torch threads of the pretraining child; a constant here, so that the parent, which only decides
# the child's OpenMP set-up for them, need not import torch (about 3.6 s) to read it.
PRETRAIN_THREADS = 2
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Band:
    """Pretraining stops at the first check whose answer accuracy on the calibration split is at
    least `low`; `high` is what a check is allowed to overshoot to, else the base is reported as
    out of band. `max_steps` bounds a run that never gets there."""

    low: float = 0.15
    high: float = 0.30
    every: int = 50
    max_steps: int = 2000


CALIBRATION = Band()


def styled_answer(example_id: str, answer: str) -> str:
    """The answer as the corpus writes it: a style drawn from the example's id, so the same
    problem is written the same way whatever the order or size of the corpus."""
    draw = int(hashlib.sha256(f"style:{example_id}".encode()).hexdigest()[:8], 16) / 16**8
    for template, share in ANSWER_STYLES.values():
        if draw < share:
            return template.format(answer=answer)
        draw -= share
    return answer


def answer_value(completion: str) -> str | None:
    """The last integer of the answer line, whatever the style around it (None: no integer)."""
    found = _INTEGER.findall(completion.split("\n", 1)[0])
    return found[-1] if found else None


def pretrain_pairs(data_dir: str = "runs/data", scaffold: Path = DEFAULT_SCAFFOLD) -> list[tuple[str, str]]:
    """(prompt, styled answer) pairs from every task's train split, in the scaffold's prompt format."""
    format_prompt = import_file(scaffold / "prompt.py", "default_scaffold_prompt").format_prompt
    pairs = []
    for task, share in MIXTURE.items():
        train = load_splits(task, data_dir=data_dir)["train"]
        take = int(len(train) * share)
        pairs += [(format_prompt(row["question"]), styled_answer(row["id"], row["answer"]))
                  for row in train.select(range(take))]
    return pairs


def calibration_check(data_dir: str = "runs/data", band: Band = CALIBRATION, scaffold: Path = DEFAULT_SCAFFOLD):
    """An `on_step` for `model.pretrain.pretrain`: every `band.every` steps, greedy answers to the
    calibration split; stops once their answer accuracy reaches the band. Its readings are kept
    in the returned function's `history` ([step, answer accuracy, strict accuracy])."""
    import torch

    from model.generate import SamplingParams, generate
    from model.pretrain import Check
    from rl_pipeline.tasks import get_task

    format_prompt = import_file(scaffold / "prompt.py", "default_scaffold_prompt").format_prompt
    task = get_task(next(iter(MIXTURE)))
    split = load_splits(task.name, data_dir=data_dir)["calibration"]
    prompts = [format_prompt(q) for q in split["question"]]
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, stop=("\n",))

    def check(step: int, policy, tokenizer):
        if step % band.every:
            return None
        policy.eval()
        with torch.no_grad():
            texts = [c[0].text for c in generate(policy, tokenizer, prompts, greedy)]
        policy.train()
        answers = sum(answer_value(t) == ex["answer"] for t, ex in zip(texts, split)) / len(split)
        strict = sum(task.score(t, ex).correct for t, ex in zip(texts, split)) / len(split)
        check.history.append([step, answers, strict])
        return Check(f"calibration {answers:.3f} (band {band.low:.2f}-{band.high:.2f})", stop=answers >= band.low)

    check.history = []
    return check


def tokenizer_texts(pairs: list[tuple[str, str]]) -> list[str]:
    """Text the tokenizer is trained on: the corpus, plus every scaffold's surface and knobs."""
    texts = [p + a for p, a in pairs[:5000]]
    for name in ("surface.yaml", "scaffold.yaml", "reward.py", "prompt.py"):
        texts += [f.read_text() for f in sorted((REPO / "scaffolds").glob(f"*/{name}"))]
    return texts


def pretrain_base(out: str = "runs/models/base", *, seed: int = 0, steps: int | None = None,
                  preset: str = "tiny", data_dir: str = "runs/data", band: Band = CALIBRATION) -> dict:
    """Pretrain and save the base policy, until the calibration band (or exactly `steps` steps);
    returns the summary written to pretrain.json, with the calibration readings. A base already at
    `out` is replaced, whole, once the new one is complete (see `_pretrain_locked`).

    Training runs in a child process, for its OpenMP set-up only: where the cores are idle when it
    starts (`free_cores`), its idle threads spin briefly instead of sleeping at once, which made
    pretraining 1.5x faster on two idle cores (rl_pipeline/env.py). Its own thread count is fixed,
    so the arithmetic, and the base, is the same either way.
    """
    with _base_lock(out):
        return _pretrain_locked(out, seed=seed, steps=steps, preset=preset, data_dir=data_dir, band=band)


@contextlib.contextmanager
def _base_lock(out: str) -> Iterator[None]:
    """Hold the lock that one pretraining of `out` holds, beside the folder (not in it: it is
    swapped), saying so when another process holds it and this one waits."""
    lock = Path(out).with_name(f".{Path(out).name}.lock")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock, blocking=False))
        except BlockingIOError:
            Console().print(f"base policy: another process is pretraining {out}; waiting for it")
            stack.enter_context(file_lock(lock))
        yield


def _pretrain_locked(out: str, *, seed: int, steps: int | None, preset: str, data_dir: str, band: Band) -> dict:
    """`pretrain_base` under its lock. The child saves into a temp folder beside `out` that becomes
    `out` in one rename once the weights, tokenizer and pretrain.json are all written: a process
    that finds `out/config.json` finds a whole base, and a pretraining killed at any moment leaves
    the old base or none (its temp folder is removed by the next pretraining of `out`)."""
    remove_stale(out)
    folder = recover_dir(out)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / "config.json").is_file())):
        raise ValueError(f"{out} exists and is not a base policy's folder; pretraining replaces its folder whole, "
                         f"so give it a new or empty one")
    threads = PRETRAIN_THREADS
    env, free = idle_cores_env(scrubbed_env() | {"PYTHONPATH": str(REPO)}, threads)
    idle = env.get("OMP_WAIT_POLICY") or f"spin {env.get('GOMP_SPINCOUNT', 'default')}"
    Console().print(f"pretraining on {threads} threads ({'?' if free is None else f'{free:.1f}'} cores idle), "
                    f"OpenMP's idle threads: {idle}")
    with tempfile.TemporaryDirectory() as tmp, replacing_dir(out) as staging:
        error_file = Path(tmp) / "error.json"
        job = {"out": out, "save_to": str(staging), "seed": seed, "steps": steps, "preset": preset,
               "data_dir": data_dir, "band": asdict(band), "free_cores": free, "error_file": str(error_file)}
        code = subprocess.run([sys.executable, "-P", "-m", "rl_pipeline.corpus", json.dumps(job)], env=env,
                              preexec_fn=die_with_parent).returncode
        if error_file.is_file():
            _raise_child_error(json.loads(error_file.read_text()))
        if code or not (staging / "pretrain.json").is_file():
            raise RuntimeError(f"pretraining the base into {out} failed (exit status {code})")
    summary = json.loads((Path(out) / "pretrain.json").read_text())
    last = summary["calibration"]["answer_accuracy"]
    console = Console()
    console.print(f"[green]base policy saved[/] to {out}: {summary['steps']} steps, loss "
                  f"{summary['final_loss']:.3f}, calibration answer accuracy {last}, {summary['seconds']:.0f}s")
    if steps is None and not summary["calibration"]["in_band"]:
        console.print(f"[yellow]warning:[/] the base ended at calibration answer accuracy {last}, outside the band "
                      f"{band.low:.2f}-{band.high:.2f}: campaigns on it are not comparable with others")
    return summary


def _raise_child_error(error: dict) -> None:
    """Raise in this process what the pretraining child raised: the same built-in exception (so a
    bad argument still reads as one line), else a RuntimeError with the child's traceback."""
    cls = getattr(builtins, error["type"], None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        raise cls(error["message"])
    raise RuntimeError(f"pretraining failed: {error['type']}: {error['message']}\n{error['traceback']}")


def _pretrain_here(out: str, save_to: str, seed: int, steps: int | None, preset: str, data_dir: str, band: Band,
                   free_cores: float | None) -> None:
    """`pretrain_base`'s child: train the base for `out`, and write it to `save_to` with
    pretrain.json (the calibration readings and the OpenMP set-up it ran under)."""
    from model.pretrain import PretrainConfig, pretrain

    pairs = pretrain_pairs(data_dir)
    config = PretrainConfig(out=out, preset=preset, steps=steps, seed=seed, max_steps=band.max_steps,
                            threads=PRETRAIN_THREADS)
    check = calibration_check(data_dir, band)

    def report() -> dict:
        last = check.history[-1][1] if check.history else None
        return {"openmp": {"threads": config.threads, "free_cores": free_cores,
                           **{name: os.environ.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}},
                "calibration": {"band": [band.low, band.high], "every": band.every, "history": check.history,
                                "answer_accuracy": last,
                                "in_band": last is not None and band.low <= last <= band.high}}

    pretrain(config, pairs, tokenizer_texts(pairs), check, report=report, save_to=save_to)


def ensure_base(base: str, seed: int = 0, *, data_dir: str = "runs/data", band: Band = CALIBRATION) -> None:
    """Pretrain the base policy into `base` unless a checkpoint is already there, on the splits in
    `data_dir` (a campaign's own `<runs_dir>/data`, the folder its runs evaluate on). Two campaigns
    started at once on a fresh machine pretrain it once: the second waits for the first's lock and
    then finds the base."""
    if (Path(base) / "config.json").is_file():
        Console().print(f"base policy: {base} (found)")
        return
    with _base_lock(base):
        if (recover_dir(base) / "config.json").is_file():
            Console().print(f"base policy: {base} (found: pretrained by another process meanwhile)")
            return
        Console().print(f"base policy: {base} missing, pretraining it")
        _pretrain_locked(base, seed=seed, steps=None, preset="tiny", data_dir=data_dir, band=band)


if __name__ == "__main__":  # the environment is the parent's choice (`pretrain_base`)
    job = json.loads(sys.argv[1])
    error_file = Path(job.pop("error_file"))
    try:
        _pretrain_here(**(job | {"band": Band(**job["band"])}))
    except Exception as err:  # the parent raises it again
        error_file.write_text(json.dumps({"type": type(err).__name__, "message": str(err),
                                          "traceback": traceback.format_exc()}))
        sys.exit(1)
