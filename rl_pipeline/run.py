"""The runner: evaluate one scaffold in an isolated child process and write `result.json`.

The child (rl_pipeline.worker) runs in its own process group with a time limit (the whole group
is killed on timeout), an address-space limit, and an environment scrubbed of API keys, tokens
and secrets. Whatever happens to the child (a crash, a kill, a hang), the parent writes a
result: `ok`, or `failed` with a precise reason, and it never hangs.

    python -m rl_pipeline.run --scaffold scaffolds/arith --out runs/eval/arith [--seeds 0 1 2] [--heldout]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from rl_pipeline.result import failed_result, read_result, scaffold_commit, write_result

DEFAULTS = {
    "base": "runs/models/base",
    "data_dir": "runs/data",
    "cache_dir": "runs/cache/train",
    "seeds": [0, 1, 2],
    "train_seed": 0,
    "timeout_s": 900.0,
    "memory_gb": 16.0,
    "threads": 2,
}
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE", re.IGNORECASE)


# What every child process we start gets: no hub or telemetry traffic, unbuffered output, idle
# OpenMP threads that sleep.
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def scrubbed_env() -> dict[str, str]:
    """The parent's environment less anything that looks like a credential; CHILD_ENV on."""
    return {k: v for k, v in os.environ.items() if not _SECRET.search(k)} | CHILD_ENV


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that started it dies (call it in a
    child before exec, as a `preexec_fn`)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _sandbox(memory_gb: float):
    """Runs in the child before exec: cap its address space, and have the kernel kill it when the
    parent dies (its own session shields it from the parent's signals, so a kill -9 of a campaign
    would otherwise leave it running to the end of its time limit)."""
    def apply():
        limit = int(memory_gb * 1024 ** 3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        die_with_parent()
    return apply


def run_scaffold(scaffold: str | Path, out: str | Path, *, overrides: dict | None = None,
                 heldout: bool = False, **options) -> dict:
    """Evaluate `scaffold` in a sandboxed child; return the result (also written to `out`)."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown runner options: {', '.join(sorted(unknown))}")
    opts = DEFAULTS | options
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").unlink(missing_ok=True)
    job = {
        "scaffold": str(Path(scaffold).resolve()),
        "commit": scaffold_commit(scaffold),
        "out": str(out),
        "overrides": overrides or {},
        "heldout": heldout,
        "base": str(Path(opts["base"]).resolve()),
        "data_dir": str(Path(opts["data_dir"]).resolve()),
        "cache_dir": str(Path(opts["cache_dir"]).resolve()),
        "seeds": list(opts["seeds"]),
        "train_seed": opts["train_seed"],
        "threads": opts["threads"],
    }
    job_path = out / "job.json"
    job_path.write_text(json.dumps(job, indent=2))
    if not Path(job["base"], "config.json").is_file():
        result = failed_result(job, f"no base policy at {job['base']}: run `researcher model pretrain` first")
        write_result(out, result)
        return result

    start = time.perf_counter()
    with open(out / "worker.log", "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "rl_pipeline.worker", "--job", str(job_path)],
            stdout=log, stderr=subprocess.STDOUT, env=scrubbed_env(), start_new_session=True,
            preexec_fn=_sandbox(opts["memory_gb"]),
        )
        try:
            code = child.wait(timeout=opts["timeout_s"])
            reason = None if code == 0 else _exit_reason(code, opts)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            reason = f"timed out after {opts['timeout_s']:.0f}s; the run's process group was killed"
    elapsed = time.perf_counter() - start

    if reason is None and (out / "result.json").is_file():
        return read_result(out)
    tail = (out / "worker.log").read_text(errors="replace")[-4000:]
    result = failed_result(job, reason or "the worker exited without writing result.json", tail)
    result["timings"]["total_s"] = round(elapsed, 3)
    write_result(out, result)
    return result


def _exit_reason(code: int, opts: dict) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = f" (memory limit {opts['memory_gb']:g} GiB?)" if name in ("SIGKILL", "SIGSEGV") else ""
        return f"the worker was killed by {name}{hint}"
    return f"the worker exited with code {code}"


def main(argv: list[str] | None = None) -> int:
    from rl_pipeline.scaffold import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scaffold", required=True, help="scaffold folder")
    parser.add_argument("--out", required=True, help="folder for result.json, samples.jsonl, worker.log")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULTS["seeds"])
    parser.add_argument("--heldout", action="store_true", help="also score the held-out split")
    parser.add_argument("--base", default=DEFAULTS["base"], help="base policy checkpoint")
    parser.add_argument("--timeout", type=float, default=DEFAULTS["timeout_s"], help="seconds")
    parser.add_argument("--set", nargs="*", default=[], metavar="KNOB=VALUE", help="knob overrides")
    args = parser.parse_args(argv)
    result = run_scaffold(args.scaffold, args.out, overrides=parse_overrides(args.set), heldout=args.heldout,
                          seeds=args.seeds, base=args.base, timeout_s=args.timeout)
    if result["status"] == "ok":
        low, high = result["metrics"]["accuracy_ci95"]
        print(f"accuracy: {result['metrics']['accuracy']:.4f} [{low:.4f}, {high:.4f}]")
    else:
        print(f"failed: {result['reason']}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
