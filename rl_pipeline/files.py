"""Crash-safe file operations, one of each, for every layer above: atomic writes, folders swapped
in whole, and advisory file locks.

    write_atomic(path, text)                  # readers see the old file or the new one, never half
    write_atomic(path, text, exclusive=True)  # create only if absent; False if the name exists
    with replacing_dir(final) as tmp:         # fill tmp; on success it becomes `final` in one rename
        save_policy(policy, tokenizer, tmp)
    with file_lock(path):                     # flock: the kernel drops it when the holder dies
        ...
    disk_full(err, where)                     # is this error a full disk? (libraries hide ENOSPC)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


NO_SPACE = "No space left on device"  # strerror(ENOSPC): how a full disk shows in a result's reason
# Below this much free space, any error that ends a write is taken for a full disk: torch.save
# reports ENOSPC as "unexpected pos 11328 vs 11220", safetensors as an error of its own.
LOW_DISK_BYTES = 256 * 2 ** 20


def disk_full(err: BaseException | str, where: str | os.PathLike) -> bool:
    """`err` (an error, or a failed result's reason) is the disk filling up: ENOSPC or EDQUOT in it
    or in an error it came from, or anything while `where`'s file system is all but full."""
    seen = err
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)) or NO_SPACE in str(seen):
            return True
        seen = None if isinstance(seen, str) else (seen.__cause__ or seen.__context__)
    return shutil.disk_usage(where).free < LOW_DISK_BYTES


def write_atomic(path: str | os.PathLike, data: str | bytes, *, exclusive: bool = False) -> bool:
    """Write `data` to `path` through a temp file in the same folder, fsynced, then renamed into
    place. With `exclusive`, the temp file is hard-linked instead (link(2) fails if the name
    exists), which makes "create if absent" atomic across processes; returns False when the name
    was taken. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a written file is as readable as any other
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def recover_dir(final: str | os.PathLike) -> Path:
    """`final`, taken back from `final.old` when a crash came between the two renames of a
    `replacing_dir` swap (the old folder is complete; the new one was never renamed in)."""
    final = Path(final)
    old = final.with_name(f"{final.name}.old")
    if not final.exists() and old.exists():
        old.rename(final)
    return final


@contextlib.contextmanager
def replacing_dir(final: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """A fresh temp folder beside `final`; when the block ends without an error it is swapped in
    whole (the old `final` moves aside first and is removed after), so a crash at any moment
    leaves either the old folder or the new one. Without `replace`, a `final` that appeared
    meanwhile (another process made the same thing) is kept and ours discarded. On an error the
    temp folder is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    old = final.with_name(f"{final.name}.old")
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is as readable as its parent
        yield tmp
        if not replace:
            try:
                tmp.rename(final)  # fails when another process made `final` meanwhile: theirs stays
            except OSError:
                if not final.exists():
                    raise
            return
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(final: str | os.PathLike) -> None:
    """Remove temp folders that a process killed inside `replacing_dir(final)` left behind. Call it
    only while no other process can be filling one (under a lock, or with one writer)."""
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, blocking: bool = True) -> Iterator[int]:
    """Hold an flock on `path` (created when missing) for the block; yields the descriptor.

    The kernel drops the lock when the holder dies, kill -9 included, so no stale lock ever needs
    cleaning by hand; the file itself stays (deleting it would let two processes lock two inodes).
    Non-blocking, a lock held elsewhere raises BlockingIOError. The descriptor is not inherited by
    child processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
