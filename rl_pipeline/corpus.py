"""The supervised corpus the base policy is pretrained on, and the `pretrain` entry point.

Pairs are (prompt, answer) from the tasks' `train` splits, formatted by the default scaffold's
prompt.py (the format the loop starts from), so evaluation and held-out problems never leak in.
The tokenizer is trained on the same text plus the scaffolds' surface files, so proposals the
researcher writes later (knob names, JSON) tokenize compactly too.

    researcher model pretrain --out runs/models/base
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from rl_pipeline.data import load_splits
from rl_pipeline.scaffold import import_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCAFFOLD = REPO / "scaffolds" / "arith"
# The share of each task's train split in the corpus. Countdown is left out: its long answers
# cost a fifth of the budget and slowed arith learning without making countdown solvable.
MIXTURE = {"arith": 1.0}


def pretrain_pairs(data_dir: str = "runs/data", scaffold: Path = DEFAULT_SCAFFOLD) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from every task's train split, in the scaffold's prompt format."""
    format_prompt = import_file(scaffold / "prompt.py", "default_scaffold_prompt").format_prompt
    pairs = []
    for task, share in MIXTURE.items():
        train = load_splits(task, data_dir=data_dir)["train"]
        take = int(len(train) * share)
        pairs += [(format_prompt(row["question"]), row["answer"]) for row in train.select(range(take))]
    return pairs


def tokenizer_texts(pairs: list[tuple[str, str]]) -> list[str]:
    """Text the tokenizer is trained on: the corpus, plus every scaffold's surface and knobs."""
    texts = [p + a for p, a in pairs[:5000]]
    for name in ("surface.yaml", "scaffold.yaml", "reward.py", "prompt.py"):
        texts += [f.read_text() for f in sorted((REPO / "scaffolds").glob(f"*/{name}"))]
    return texts


def pretrain_base(out: str = "runs/models/base", *, seed: int = 0, steps: int | None = None,
                  preset: str = "tiny", data_dir: str = "runs/data", on_step=None) -> dict:
    """Pretrain and save the base policy; returns the summary written to pretrain.json."""
    from model.pretrain import PretrainConfig, pretrain

    pairs = pretrain_pairs(data_dir)
    config = PretrainConfig(out=out, preset=preset, steps=steps, seed=seed)
    summary = pretrain(config, pairs, tokenizer_texts(pairs), on_step)
    Console().print(f"[green]base policy saved[/] to {out}: {summary['config']['steps']} steps, "
                    f"loss {summary['final_loss']:.3f}, {summary['seconds']:.0f}s")
    return summary


def ensure_base(base: str, seed: int = 0) -> None:
    """Pretrain the base policy into `base` unless a checkpoint is already there."""
    if (Path(base) / "config.json").is_file():
        Console().print(f"base policy: {base} (found)")
        return
    Console().print(f"base policy: {base} missing, pretraining it")
    pretrain_base(out=base, seed=seed)
