"""The training cache's size limit: trained policies deleted least recently used first.

Every trained policy is cached under its training key (`runs/cache/train/<key>/`, 53 MB each for
the tiny preset), so a recipe measured again is not trained again. Nothing else ever removes one:
this machine's efficacy campaigns left 933 of them, 48 GB, and filled the disk. With a limit
(`runner.cache_gb`), the job that caches a new policy then deletes the entries used longest ago
until the cache is within the limit.

An entry is marked used (its folder's mtime) by every job that trains it or reads it. Never
deleted: the entry just cached, and any used within GRACE_S, because a job of another campaign
checks the cache, then runs its sandbox for minutes, then loads the policy. An entry is renamed
aside before it is deleted, so no reader sees half of one; a deleted one is trained again by the
next job that needs it, a cache miss and not an error.

    mark_used(entry)
    evicted = prune(Path("runs/cache/train"), max_bytes=20 * 2 ** 30, keep=entry)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

GRACE_S = 3600.0  # longer than any job's time limit (runner.timeout_s: 900 s by default)
EVICTED = ".evicted-"  # an entry renamed aside for deletion: `.<key>.evicted-<pid>`


def mark_used(entry: Path) -> None:
    """Mark a cached policy used now; FileNotFoundError if it is gone (deleted by a limit)."""
    os.utime(entry)


def entry_size(entry: Path) -> int:
    """Bytes of the files in one entry (an entry holds files only)."""
    total = 0
    for item in os.scandir(entry):
        try:
            total += item.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
    return total


def prune(root: Path, max_bytes: int, keep: Path | None = None) -> list[str]:
    """Delete the least recently used entries under `root` until they hold at most `max_bytes`,
    never `keep` nor one used within GRACE_S; the keys deleted, oldest first. Temp folders (their
    names start with a dot) are not entries; ones left by a deletion a crash cut short are removed."""
    now = time.time()
    entries, sizes = [], {}
    for item in os.scandir(root):
        if item.name.startswith("."):
            if EVICTED in item.name:
                shutil.rmtree(item.path, ignore_errors=True)
            continue
        if item.is_dir(follow_symlinks=False):
            path = Path(item.path)
            try:  # another job's prune may take an entry at any moment
                used, size = item.stat().st_mtime, entry_size(path)
            except FileNotFoundError:
                continue
            entries.append((used, path))
            sizes[path] = size
    total = sum(sizes.values())
    evicted = []
    for _, path in sorted(entries):
        if total <= max_bytes:
            break
        if keep is not None and path == Path(keep):
            continue
        try:
            if now - path.stat().st_mtime < GRACE_S:  # read again: a job may have marked it meanwhile
                continue
            aside = path.with_name(f".{path.name}{EVICTED}{os.getpid()}")
            path.rename(aside)
        except FileNotFoundError:  # another job's prune took it
            continue
        shutil.rmtree(aside, ignore_errors=True)
        total -= sizes[path]
        evicted.append(path.name)
    return evicted
