"""The data cache's manifest, read without `datasets`.

    split_hashes("runs/data", "arith")["train"]   # the training split's content hash

`rl_pipeline.data` writes `<data_dir>/<task>/manifest.json` last when it builds a task's splits,
with each split's content hash. A caller that needs only a hash (the Ray driver ordering its jobs
by whether they train) reads it here instead of importing `rl_pipeline.data`, which pulls in
`datasets` and pyarrow: seconds and tens of MB in a process that never loads a split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


class ManifestError(RuntimeError):
    """A task's data cache has no readable manifest: its splits were never built, or were damaged."""


def split_hashes(data_dir: str | os.PathLike, task: str) -> dict[str, str]:
    """Each split's content hash as the task's manifest records it."""
    path = Path(data_dir) / task / MANIFEST
    try:
        return dict(json.loads(path.read_text())["hashes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"no readable data manifest at {path} ({type(exc).__name__}: {exc}); "
                            f"the splits are built by rl_pipeline.data.load_splits") from exc
