"""The data cache's manifest, read without `datasets`.

    split_hashes("runs/data", "arith")["train"]   # the training split's content hash
    splits_folder("runs/data", "arith", {"eval": 800, "heldout": 800})   # runs/data/arith-eval800-heldout800

`rl_pipeline.data` writes `<folder>/manifest.json` last when it builds a task's splits, with each
split's content hash. The folder is `<data_dir>/<task>` at the default sizes and names the sizes
that differ from them otherwise, so splits of other sizes (a campaign scored on 800 eval problems)
sit beside the default ones instead of replacing them. A caller that needs only a hash (the Ray
driver ordering its jobs by whether they train) reads it here instead of importing
`rl_pipeline.data`, which pulls in `datasets` and pyarrow: seconds and tens of MB in a process
that never loads a split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

MANIFEST = "manifest.json"
SPLITS = ("train", "calibration", "eval", "heldout")
DEFAULT_SIZES = {"train": 10000, "calibration": 400, "eval": 200, "heldout": 200}


class ManifestError(RuntimeError):
    """A task's data cache has no readable manifest: its splits were never built, or were damaged."""


def eval_sizes(problems: int) -> dict[str, int]:
    """The sizes of a task's splits with `problems` problems in eval and in held-out (a campaign's
    `split_size`), the others at their defaults."""
    return {**DEFAULT_SIZES, "eval": problems, "heldout": problems}


def splits_folder(data_dir: str | os.PathLike, task: str, sizes: Mapping[str, int] | None = None) -> Path:
    """The folder of a task's splits at `sizes` (None: the defaults) under `data_dir`."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    differ = "".join(f"-{split}{sizes[split]}" for split in SPLITS if sizes[split] != DEFAULT_SIZES[split])
    return Path(data_dir) / f"{task}{differ}"


def split_hashes(data_dir: str | os.PathLike, task: str, sizes: Mapping[str, int] | None = None) -> dict[str, str]:
    """Each split's content hash as the manifest of the task's splits at `sizes` records it."""
    path = splits_folder(data_dir, task, sizes) / MANIFEST
    try:
        return dict(json.loads(path.read_text())["hashes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"no readable data manifest at {path} ({type(exc).__name__}: {exc}); "
                            f"the splits are built by rl_pipeline.data.load_splits") from exc
