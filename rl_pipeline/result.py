"""The `result.json` schema: what one evaluated scaffold commit produces.

Versioned (`schema_version`), so a later harness can read an older campaign. Two statuses:
`ok` (metrics, per-example scores for every seed, failure categories, timings) and `failed`
(a precise reason and the traceback). A run that scored held-out or calibration only (their eval
scores being another run's already) has their parts and no top-level eval part (`metrics`,
`per_example`, `failures`, `num_examples`). The headline is `metrics.accuracy` with its 95% interval.
The per-completion records are written next to the result (`samples.jsonl`), not inside it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from rl_pipeline.files import write_atomic

SCHEMA_VERSION = 1
NO_SANDBOX_WARNING = "sandbox disabled: scaffold code ran WITHOUT isolation (it could read answers and edit the scorer)"


def scaffold_commit(path: str | Path) -> str | None:
    """The git commit of a scaffold folder, when it is inside a repository with no local changes."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
        return None
    return commit if not dirty else f"{commit}+dirty"


def _base(job: dict, status: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "scaffold": {"path": job["scaffold"], "commit": job.get("commit"), "content_hash": None},
        "seeds": job["seeds"],
        "timings": {},
    }


def ok_result(job, scaffold, training, evaluation, heldout, data_hashes, timings, calibration=None) -> dict:
    """A successful run's result: eval's scores (none when `evaluation` is None), and a part of its
    own for held-out and for the calibration split (`calibration`: its evaluation and its data
    hash) when they were scored."""
    result = _base(job, "ok")
    result["scaffold"]["content_hash"] = scaffold.content_hash
    result |= {"task": scaffold.task, "knobs": scaffold.knobs(), "training": training}
    if evaluation is not None:
        result |= {"metrics": evaluation["metrics"], "per_example": evaluation["per_example"],
                   "failures": evaluation["failures"], "num_examples": evaluation["num_examples"]}
    result |= {"data_hashes": data_hashes, "timings": {k: round(v, 3) for k, v in timings.items()}}
    if evaluation is not None:
        result["timings"] |= {"eval_" + k: v for k, v in evaluation["timings"].items()}
        result["records"] = evaluation["records"]
    if heldout is not None:
        result["heldout"] = {"metrics": heldout["metrics"], "per_example": heldout["per_example"]}
    if calibration is not None:
        scores, data_hash = calibration
        result["calibration"] = {"metrics": scores["metrics"], "per_example": scores["per_example"],
                                 "seeds": list(job["seeds"]), "data_hash": data_hash}
    return result


def failed_result(job: dict, reason: str, trace: str | None = None) -> dict:
    result = _base(job, "failed")
    result |= {"reason": reason, "traceback": trace}
    return result


def write_result(out: str | Path, result: dict) -> Path:
    """Write result.json (and samples.jsonl from the records) atomically into folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = result.pop("records", None)
    if records is not None:
        write_atomic(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return out / "result.json"


def read_result(out: str | Path) -> dict:
    path = Path(out) / "result.json"
    result = json.loads(path.read_text())
    if result.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {result.get('schema_version')} is not {SCHEMA_VERSION}")
    return result


def integrity_problem(result: dict, baseline: dict, *, commit: str | None = None,
                      content_hash: str | None = None) -> str | None:
    """Why `result` cannot be compared with `baseline`, or None: every split's data hash must equal
    the baseline's, and the result must name the scaffold commit and content hash that were asked
    (when given). A failed result has nothing to check."""
    if result.get("status") != "ok":
        return None
    ours, theirs = result.get("data_hashes") or {}, baseline.get("data_hashes") or {}
    for split in sorted(set(ours) | set(theirs) | {"train", "eval", "heldout"}):
        if not ours.get(split) or ours.get(split) != theirs.get(split):
            return (f"data hash of split {split!r} is {str(ours.get(split))[:12]}, the baseline's is "
                    f"{str(theirs.get(split))[:12]}: the result was measured on other data")
    scaffold = result.get("scaffold") or {}
    if commit is not None and scaffold.get("commit") != commit:
        return f"the result names scaffold commit {scaffold.get('commit')}, not the {commit} that was evaluated"
    if content_hash is not None and scaffold.get("content_hash") != content_hash:
        return (f"the result names scaffold content {str(scaffold.get('content_hash'))[:12]}, not the "
                f"{content_hash[:12]} that was evaluated")
    return None
