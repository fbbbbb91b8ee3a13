"""Train / calibration / eval / heldout splits of a task as a `datasets.DatasetDict`, cached on disk.

    splits = load_splits("arith")              # runs/data/arith/, built on first use
    splits["eval"]                             # the internal evaluation set the loop optimizes
    splits["calibration"]                      # only pretraining reads it, to stop the base in its band
    split_hash(splits["eval"])                 # the harness checks it every round

The splits are disjoint by canonical problem, not only by text: each problem's
`meta["canonical"]` is hashed into one of 100 buckets, every split owns a fixed range of buckets
(`BUCKETS`) and keeps only problems from it. "12 + 34" in train therefore rules out
"What is 34 plus 12?" in eval, whatever the seed or the sizes. Within a split every problem
appears once.

Each split is drawn from its own random stream, seeded by (task, split, seed), so changing the
train size leaves eval and heldout as they were.

The cache, `data_dir/<task>/` (at other sizes `data_dir/<task>-eval800-heldout800/`, naming the
sizes that differ from `DEFAULT_SIZES`), is a `DatasetDict.save_to_disk` folder plus
`manifest.json`: the task's version and parameters, the sizes, the seed and each split's content
hash. When any of them differs from what was asked, or the folder fails to load or to match its
hashes, the splits are rebuilt in a temporary folder and swapped in by rename, under a file lock.
A split's first N problems are the same at any size of it: the default eval split is the first
200 problems of an 800-problem one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_from_disk

from rl_pipeline.files import file_lock, remove_stale, replacing_dir
from rl_pipeline.manifest import DEFAULT_SIZES, MANIFEST, SPLITS, splits_folder
from rl_pipeline.tasks import Task, get_task

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 2  # bump when the way splits are drawn here changes
# Buckets [lo, hi) out of 100 that each split owns. Fixed, so the split of a problem never
# depends on the sizes or the seed: no seed's heldout problem is another seed's train problem.
# Calibration (layout 2) has no buckets of its own: it draws from train's buckets, on its own
# stream, the problems the train split does not hold, so train, eval and held-out are exactly what
# they were in layout 1 (results of older campaigns keep their data hashes) and calibration shares
# no problem with any of them.
BUCKETS = {"heldout": (0, 5), "eval": (5, 10), "train": (10, 100)}
BUCKETS_OF = {"calibration": "train"}
# A split gives up after this many times the expected number of draws: the problem space is
# then too small for the size asked.
_MAX_DRAW_FACTOR = 50


def split_of(task_name: str, canonical: str) -> str:
    """The split that owns the canonical problem `canonical` of task `task_name`."""
    digest = hashlib.sha256(f"{task_name}\0{canonical}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(split for split, (lo, hi) in BUCKETS.items() if lo <= bucket < hi)


def split_hash(dataset: Dataset) -> str:
    """Content hash of a split: every row, every column, in order."""
    rows = json.dumps(dataset.to_list(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(rows.encode()).hexdigest()


def _draw(task: Task, split: str, size: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    rng = random.Random(f"{task.name}:{split}:{seed}")
    owner = BUCKETS_OF.get(split, split)
    lo, hi = BUCKETS[owner]
    max_draws = _MAX_DRAW_FACTOR * size * 100 // (hi - lo) + 1000
    examples: list[dict[str, Any]] = []
    seen: set[str] = set()
    draws = 0
    while len(examples) < size:
        if draws == max_draws:
            raise RuntimeError(
                f"{task.name}: found only {len(examples)} distinct {split} problems of {size} in "
                f"{max_draws} draws; the problem space is too small for this size"
            )
        draws += 1
        example = task.make(rng)
        canonical = example["meta"]["canonical"]
        if canonical not in seen and canonical not in exclude and split_of(task.name, canonical) == owner:
            seen.add(canonical)
            examples.append(example)
    return examples


def build_splits(task: Task, sizes: Mapping[str, int], seed: int) -> DatasetDict:
    """Generate every split in memory, with no cache."""
    drawn = {split: _draw(task, split, sizes[split], seed) for split in SPLITS if split != "calibration"}
    train = frozenset(example["meta"]["canonical"] for example in drawn["train"])
    drawn["calibration"] = _draw(task, "calibration", sizes["calibration"], seed, exclude=train)
    return DatasetDict({split: Dataset.from_list(drawn[split]) for split in SPLITS})


def _resolve_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    unknown = set(sizes or {}) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; the splits are {list(SPLITS)}")
    resolved = {**DEFAULT_SIZES, **(sizes or {})}
    for split, size in resolved.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size of split {split!r} must be a positive integer, got {size!r}")
    return resolved


def _cache_key(task: Task, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    key = {
        "layout": LAYOUT_VERSION,
        "task": task.name,
        "version": task.version,
        "params": task.params(),
        "sizes": sizes,
        "seed": seed,
        "buckets": BUCKETS,
        "buckets_of": BUCKETS_OF,
    }
    # Through JSON once so it compares equal to the manifest read back (tuples become lists).
    return json.loads(json.dumps(key))


def _load_cached(folder: Path, key: dict[str, Any]) -> DatasetDict | None:
    """The cached splits if `folder` holds exactly what `key` asks for, intact; None otherwise."""
    if not (folder / MANIFEST).exists():
        if folder.exists():
            logger.warning("cache %s has no manifest; rebuilding", folder)
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest["key"] != key:
            logger.info("cache %s was built for %s; rebuilding for %s", folder, manifest["key"], key)
            return None
        splits = load_from_disk(str(folder))
        for split in SPLITS:
            if split_hash(splits[split]) != manifest["hashes"][split]:
                logger.warning("cache %s: split %s does not match its hash; rebuilding", folder, split)
                return None
        return splits
    # A damaged cache fails in many ways (bad JSON, missing keys, arrow errors); all mean rebuild.
    except Exception as exc:
        logger.warning("cache %s is unreadable (%s: %s); rebuilding", folder, type(exc).__name__, exc)
        return None


def _rebuild(task: Task, key: dict[str, Any], sizes: dict[str, int], seed: int, folder: Path) -> None:
    remove_stale(folder)  # left behind by a process killed mid-rebuild; safe to remove under the lock
    splits = build_splits(task, sizes, seed)
    manifest = {"key": key, "hashes": {split: split_hash(splits[split]) for split in SPLITS}}
    with replacing_dir(folder) as tmp:
        splits.save_to_disk(str(tmp))
        # Written last: a folder with a manifest is a complete folder.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def load_splits(
    task_name: str,
    *,
    data_dir: str | os.PathLike[str] = "runs/data",
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
) -> DatasetDict:
    """The splits of `task_name` (`SPLITS`), from the cache or freshly built.

    `sizes` overrides some or all of `DEFAULT_SIZES`.
    """
    task = get_task(task_name)
    resolved = _resolve_sizes(sizes)
    key = _cache_key(task, resolved, seed)
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    folder = splits_folder(root, task.name, resolved)
    # The harness and a runner child may ask for the same splits at once; one builds, one waits.
    with file_lock(root / f".{folder.name}.lock"):
        splits = _load_cached(folder, key)
        if splits is None:
            _rebuild(task, key, resolved, seed, folder)
            splits = load_from_disk(str(folder))
    return splits
