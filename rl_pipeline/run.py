"""The runner: evaluate one scaffold and write `result.json`, with scaffold code sandboxed.

Two warm processes serve every run of this process (started on the first run, kept until exit):
the trusted worker (rl_pipeline.worker: holds the data and the answers, never imports scaffold
code, scores with the fixed scorer and alone writes result.json) and, under it, the sandbox
(rl_pipeline.sandbox, rl_pipeline.zygote: bubblewrap namespaces, a uid of its own, rlimits; one fresh
forked process per job runs the scaffold's prompt.py and reward.py). Torch and the rest are
imported once, not once per round.

Every run has a time limit derived from its scaffold's training budget, a number of completions
(`time_limits`: a generous allowance per completion), capped by `timeout_s`. It is a safety net,
not a budget: a run past it fails, it never trains less. Whatever happens (a crash, a kill, a
hang), this side writes a result: `ok`, or
`failed` with a precise reason, and it never hangs. If the parent dies, even by kill -9, the
worker sees its lifeline close and exits, and the sandbox dies with it.

    python -m rl_pipeline.run --scaffold scaffolds/arith --out runs/eval/arith [--seeds 0 1 2] [--heldout]
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from rl_pipeline.env import scrubbed_env
from rl_pipeline.files import NO_SPACE, disk_full
from rl_pipeline.manifest import DEFAULT_SIZES
from rl_pipeline.result import NO_SANDBOX_WARNING, failed_result, read_result, scaffold_commit, write_result
from rl_pipeline.sandbox import SandboxUnavailable, check_sandbox

DEFAULTS = {
    "base": "runs/models/base",
    "data_dir": "runs/data",
    "split_size": DEFAULT_SIZES["eval"],  # problems in eval and held-out (their splits' folder names other sizes)
    "cache_dir": "runs/cache/train",
    "cache_gb": None,  # the training cache's limit: least recently used policies deleted past it (cache.py)
    "seeds": [0, 1, 2],
    "train_seed": 0,
    "timeout_s": 900.0,
    "memory_gb": 16.0,
    "threads": 2,
    "sandbox": True,  # False runs scaffold code WITHOUT isolation, and every result says so
    "warm": True,  # False starts the worker and the sandbox for this run only (the old cost)
}
# Parts of a run's time limit (seconds), derived from the scaffold's training budget.
PROMPTS_S = 30.0  # import the scaffold's files and format every question
# A completion cost 0.05-0.14 s of GRPO training at the default knobs (two CPU cores, load 4-6) and
# 0.081 s with 64-token rollouts at temperature 2 (load 4); the allowance leaves room to spare.
TRAIN_S_PER_COMPLETION = 0.5
TRAIN_MARGIN_S = 60.0  # load the base, set up TRL, save
EVAL_S = 60.0  # load the trained policy
EVAL_S_PER_SEED = 20.0  # per seed and split scored, at the default size of eval (200 problems)
WORKER_GRACE_S = 30.0  # past the run's limit before the trusted worker itself is killed
WORKER_START_S = 900.0  # two processes importing torch and friends on a loaded machine
log = logging.getLogger(__name__)


def _scoring_s(seeds: int, *, heldout: bool, calibration: bool, split_size: int, score_eval: bool = True) -> float:
    """Seconds allowed for scoring, per seed: eval and held-out (`split_size` problems each) and
    calibration (its default size), in proportion to their problems."""
    problems = split_size * (int(score_eval) + int(heldout)) + (DEFAULT_SIZES["calibration"] if calibration else 0)
    return EVAL_S_PER_SEED * seeds * problems / DEFAULT_SIZES["eval"]


def time_limits(completions: int, *, seeds: int, heldout: bool, cap: float, calibration: bool = False,
                split_size: int = DEFAULT_SIZES["eval"], score_eval: bool = True) -> dict[str, float]:
    """Seconds allowed to the sandboxed job (with and without training on `completions`) and to the
    whole run. The held-out split is the size of eval (`split_size`); the calibration split keeps its
    default size."""
    train_s = PROMPTS_S + TRAIN_S_PER_COMPLETION * completions + TRAIN_MARGIN_S
    total = train_s + EVAL_S + _scoring_s(seeds, heldout=heldout, calibration=calibration, split_size=split_size,
                                          score_eval=score_eval)
    return {"prompts_s": min(PROMPTS_S, cap), "train_s": min(train_s, cap), "total_s": min(total, cap)}


class RunPlan(NamedTuple):
    """What a run is expected to do: its seconds (training, then scoring), and the training key it
    would train under (None: its policy is cached, or that cannot be told: a scaffold that does not
    load, no data built yet)."""

    seconds: float
    training_key: str | None


def expected_work_s(scaffold: str | Path, *, seeds: list[int], overrides: dict | None = None, heldout: bool = False,
                    calibration: bool = False, train_seed: int = 0, score_eval: bool = True, **options) -> float:
    """A rough estimate of a run's seconds, to order runs (longest first) where several share
    workers: training on the scaffold's budget unless its training is cached, then the scoring.
    A scaffold that does not load fails at once: 0."""
    return run_plan(scaffold, seeds=seeds, overrides=overrides, heldout=heldout, calibration=calibration,
                    train_seed=train_seed, score_eval=score_eval, **options).seconds


def run_plan(scaffold: str | Path, *, seeds: list[int], overrides: dict | None = None, heldout: bool = False,
             calibration: bool = False, train_seed: int = 0, score_eval: bool = True, **options) -> RunPlan:
    """`expected_work_s` with its parts. Two runs of one training key train the same policy: where
    they share workers, the second may wait for the first's and read it from the cache (a decoder
    companion and its proposal)."""
    from rl_pipeline.manifest import ManifestError
    from rl_pipeline.scaffold import ScaffoldError, load_scaffold
    from rl_pipeline.worker import pending_training

    opts = DEFAULTS | options
    scoring_s = _scoring_s(len(seeds), heldout=heldout, calibration=calibration, split_size=opts["split_size"],
                           score_eval=score_eval)
    try:
        config = load_scaffold(scaffold, overrides, import_code=False)
    except (ScaffoldError, OSError):
        return RunPlan(0.0, None)
    try:
        key = pending_training(config, Path(opts["base"]), opts["data_dir"], opts["cache_dir"], train_seed,
                               opts["split_size"])
        training = key is not None
    except (ManifestError, OSError, ValueError, KeyError):  # no data built yet, or a file of the scaffold missing
        key, training = None, True
    return RunPlan(scoring_s + (TRAIN_S_PER_COMPLETION * config.train_completions if training else 0.0), key)


def _limit_memory(memory_gb: float):
    def apply():
        limit = int(memory_gb * 1024 ** 3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


class Runner:
    """The warm trusted worker (and, under it, the sandbox) that evaluates scaffolds one at a time."""

    def __init__(self, *, sandbox: bool = True, memory_gb: float = DEFAULTS["memory_gb"]):
        self.sandbox, self.memory_gb = sandbox, memory_gb
        self.proc: subprocess.Popen | None = None
        self.lifeline: int | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        if self.sandbox:
            check_sandbox()
        read_end, self.lifeline = os.pipe()
        self.log = tempfile.TemporaryFile()
        project = str(Path(__file__).resolve().parents[1])
        env = scrubbed_env()
        env["PYTHONPATH"] = os.pathsep.join([project, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rl_pipeline.worker", "--lifeline", str(read_end)]
            + ([] if self.sandbox else ["--no-sandbox"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, pass_fds=(read_end,),
            start_new_session=True, preexec_fn=_limit_memory(self.memory_gb))
        os.close(read_end)
        reply = self._reply(WORKER_START_S)
        if not reply or not reply.get("ready"):
            self.log.seek(0)
            tail = (reply or {}).get("log") or self.log.read().decode(errors="replace")[-4000:]
            self.close()
            raise SandboxUnavailable(f"the runner's worker did not start: {(reply or {}).get('reason', '')}\n{tail}")

    def _reply(self, timeout_s: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        return json.loads(line) if line else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, job: dict, wait_s: float) -> str | None:
        """Hand `job` to the worker and wait for it to write result.json; None when it did, else
        why not (the worker was then killed, and the next run starts a new one)."""
        with self.lock:
            if not self.alive():
                self.start()
            try:
                self.proc.stdin.write((json.dumps(job) + "\n").encode())
                self.proc.stdin.flush()
                reply = self._reply(wait_s)
            except OSError as err:
                reply, why = None, f"the runner's worker is gone ({err})"
            else:
                why = (f"timed out after {wait_s:.0f}s; the runner's worker was killed" if self.alive()
                       else f"the runner's worker died ({_exit_reason(self.proc.returncode, self.memory_gb)})")
            if reply and reply.get("done"):
                return None
            self.close()
            return why

    def close(self, *, graceful: bool = False) -> None:
        """Stop the worker: gracefully (end of input; it removes its job folder and stops the
        sandbox) when asked and it is idle, else, or after 10 s, by SIGKILL to its process group."""
        if self.proc is not None:
            if graceful and self.proc.poll() is None:
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
        if self.lifeline is not None:
            os.close(self.lifeline)
        self.proc, self.lifeline = None, None


_WARM: dict[tuple, Runner] = {}
_WARM_LOCK = threading.Lock()


def _warm_runner(sandbox: bool, memory_gb: float) -> Runner:
    with _WARM_LOCK:
        return _WARM.setdefault((sandbox, memory_gb), Runner(sandbox=sandbox, memory_gb=memory_gb))


def start_warm(*, sandbox: bool = DEFAULTS["sandbox"], memory_gb: float = DEFAULTS["memory_gb"]) -> None:
    """Start the warm processes now instead of at the first run (a pool of runners starts them all at once)."""
    runner = _warm_runner(sandbox, memory_gb)
    with runner.lock:
        if not runner.alive():
            runner.start()


@atexit.register
def shutdown() -> None:
    """Stop the warm processes (they also stop on their own when this process ends)."""
    with _WARM_LOCK:
        for runner in _WARM.values():
            runner.close(graceful=True)
        _WARM.clear()


def job_options(job: dict) -> dict:
    """The keyword arguments of `run_scaffold` and `run_plan` that a job ({scaffold, out, seeds, and
    any of heldout, calibration, train_seed, score_eval}) names, the others at their defaults."""
    return {"seeds": job["seeds"], "heldout": job.get("heldout", False), "calibration": job.get("calibration", False),
            "train_seed": job.get("train_seed", 0), "score_eval": job.get("score_eval", True)}


def run_scaffold(scaffold: str | Path, out: str | Path, *, overrides: dict | None = None,
                 heldout: bool = False, calibration: bool = False, score_eval: bool = True, **options) -> dict:
    """Evaluate `scaffold` (prompt.py and reward.py in the sandbox, scoring outside it); return the
    result (also written to `out`). `heldout` and `calibration` score those splits too, each in a
    part of its own; without `score_eval` they alone are scored (a run for their part only, its
    eval scores being another run's already: the result then has no top-level eval part). Raises
    SandboxUnavailable when the sandbox cannot be built, and OSError(ENOSPC) when the run failed
    for a full disk (`raise_if_disk_full`)."""
    return raise_if_disk_full(_run_scaffold(scaffold, out, overrides=overrides, heldout=heldout,
                                            calibration=calibration, score_eval=score_eval, **options), out)


def _run_scaffold(scaffold: str | Path, out: str | Path, *, overrides: dict | None = None,
                  heldout: bool = False, calibration: bool = False, score_eval: bool = True, **options) -> dict:
    from rl_pipeline.scaffold import ScaffoldError, load_scaffold

    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown runner options: {', '.join(sorted(unknown))}")
    if not (score_eval or heldout or calibration):
        raise ValueError("a run must score at least one split: eval, held-out or calibration")
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
        "calibration": calibration,
        "score_eval": score_eval,
        "base": str(Path(opts["base"]).resolve()),
        "data_dir": str(Path(opts["data_dir"]).resolve()),
        "split_size": opts["split_size"],
        "cache_dir": str(Path(opts["cache_dir"]).resolve()),
        "cache_gb": opts["cache_gb"],
        "seeds": list(opts["seeds"]),
        "train_seed": opts["train_seed"],
        "threads": opts["threads"],
        "memory_gb": opts["memory_gb"],
    }
    if not opts["sandbox"]:
        log.warning(NO_SANDBOX_WARNING)
        print(f"WARNING: {NO_SANDBOX_WARNING}", file=sys.stderr)

    def failed(reason: str, trace: str | None = None) -> dict:
        result = failed_result(job, reason, trace)
        if not opts["sandbox"]:
            result["warnings"] = [NO_SANDBOX_WARNING]
        write_result(out, result)
        return result

    if not Path(job["base"], "config.json").is_file():
        return failed(f"no base policy at {job['base']}: run `researcher model pretrain` first")
    try:
        config = load_scaffold(job["scaffold"], job["overrides"], import_code=False)
    except ScaffoldError as err:
        return failed(f"{type(err).__name__}: {err}")
    job["limits"] = time_limits(config.train_completions, seeds=len(job["seeds"]), heldout=heldout,
                                calibration=calibration, cap=opts["timeout_s"], split_size=opts["split_size"],
                                score_eval=score_eval)
    (out / "job.json").write_text(json.dumps(job, indent=2))

    start = time.perf_counter()
    runner = (_warm_runner(opts["sandbox"], opts["memory_gb"]) if opts["warm"]
              else Runner(sandbox=opts["sandbox"], memory_gb=opts["memory_gb"]))
    try:
        why = runner.run(job, job["limits"]["total_s"] + WORKER_GRACE_S)
    finally:
        if not opts["warm"]:
            runner.close(graceful=True)
    if why is None and (out / "result.json").is_file():
        result = read_result(out)
        if result["scaffold"]["path"] == job["scaffold"] and result["seeds"] == job["seeds"]:
            return result
        why = "result.json does not name the scaffold and seeds of this run"
    result = failed(why or "the worker answered without writing result.json")
    result["timings"]["total_s"] = round(time.perf_counter() - start, 3)
    write_result(out, result)
    return result


def raise_if_disk_full(result: dict, where: str | Path) -> dict:
    """`result`, unless it failed because the disk is full: that is no verdict on the candidate
    (a campaign here once recorded 26 rounds in a row as failed candidates that way), so it is
    raised as OSError(ENOSPC) and stops the campaign, whose resume runs the round again."""
    if result.get("status") == "failed" and disk_full(str(result.get("reason", "")), where):
        raise OSError(errno.ENOSPC, f"{NO_SPACE} while evaluating {result.get('scaffold', {}).get('path')}: "
                                    f"{result.get('reason')}")
    return result


def _exit_reason(code: int | None, memory_gb: float) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = f" (memory limit {memory_gb:g} GiB?)" if name in ("SIGKILL", "SIGSEGV") else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    from rl_pipeline.scaffold import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scaffold", required=True, help="scaffold folder")
    parser.add_argument("--out", required=True, help="folder for result.json, samples.jsonl, worker.log")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULTS["seeds"])
    parser.add_argument("--heldout", action="store_true", help="also score the held-out split")
    parser.add_argument("--split-size", type=_positive, default=DEFAULTS["split_size"],
                        help="problems in eval and held-out (default %(default)s)")
    parser.add_argument("--train-seed", type=int, default=DEFAULTS["train_seed"], help="seed of GRPO training")
    parser.add_argument("--base", default=DEFAULTS["base"], help="base policy checkpoint")
    parser.add_argument("--timeout", type=float, default=DEFAULTS["timeout_s"], help="cap on the run's seconds")
    parser.add_argument("--set", nargs="*", default=[], metavar="KNOB=VALUE", help="knob overrides")
    parser.add_argument("--no-sandbox", action="store_true", help="run scaffold code WITHOUT isolation")
    args = parser.parse_args(argv)
    try:
        result = run_scaffold(args.scaffold, args.out, overrides=parse_overrides(args.set), heldout=args.heldout,
                              seeds=args.seeds, train_seed=args.train_seed, base=args.base, timeout_s=args.timeout,
                              sandbox=not args.no_sandbox, split_size=args.split_size)
    except SandboxUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result["status"] == "ok":
        low, high = result["metrics"]["accuracy_ci95"]
        training = result["training"]
        print(f"training: {training['completions']} completions in {training['steps']} steps"
              f"{' (cached)' if training['cached'] else ''}")
        print(f"accuracy: {result['metrics']['accuracy']:.4f} [{low:.4f}, {high:.4f}]")
    else:
        print(f"failed: {result['reason']}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
