"""The trusted side of the runner: a warm process that turns one job into one `result.json`.

It never imports or runs scaffold code. Per job it reads the scaffold's yaml (knobs, surface),
holds the splits and their answers, and hands the untrusted side (the sandbox, rl_pipeline.zygote)
only what that needs: the scaffold's files, the questions to format and, when the training
inputs are not cached, the base policy and the training examples. What comes back is data: prompt
strings, checked to be one non-empty string per question, and trained weights, accepted only as a
safetensors file with exactly the base's tensor names, shapes and dtypes and a config equal to the
base's. The weights are cached here (the cache holds only weights that passed these checks), loaded
with the base's own config and tokenizer, and evaluated with the fixed scorer
(rl_pipeline.evaluate). Anything else is a failed result with the reason.

Started and fed by rl_pipeline.run (JSON lines: the parent sends a job, the worker answers when
result.json is written); it stays up across jobs, so torch and the rest are imported once.

    python -m rl_pipeline.worker --serve [--no-sandbox] --lifeline FD
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from rl_pipeline import result as result_schema
from rl_pipeline.cache import mark_used, prune
from rl_pipeline.files import replacing_dir, write_atomic
from rl_pipeline.manifest import MANIFEST, eval_sizes, split_hashes, splits_folder
from rl_pipeline.sandbox import JOB_MOUNT, sandbox_command, sandbox_uid
from rl_pipeline.scaffold import DATA_FILE

TRAIN_CODE_VERSION = "3"  # 2: weights trained in the sandbox, checked here; 3: a budget of completions
ZYGOTE_START_S = 600.0  # importing torch and friends on a loaded machine
ZYGOTE_GRACE_S = 30.0  # beyond the job's own limit, before the whole sandbox is killed
MAX_PROMPTS_BYTES = 64 * 1024 ** 2
LOG_TAIL = 4000
# Keys of config.json that saving may legitimately change; every other key must equal the base's.
CONFIG_FREE_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_cache"}


class JobFailed(Exception):
    """The job cannot produce a result; `reason` says why, `trace` is what the sandbox printed."""

    def __init__(self, reason: str, trace: str | None = None):
        super().__init__(reason)
        self.trace = trace


# ----------------------------------------------------------------------------- the sandbox
def _remove_stale_roots() -> None:
    """Remove the job folders of workers that were killed before they could (named by their pid)."""
    for root in Path(tempfile.gettempdir()).glob("rl-sandbox-*-*"):
        pid = root.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and root.is_dir() and not root.is_symlink():
            shutil.rmtree(root, ignore_errors=True)


class Sandbox:
    """The warm untrusted side: the fork server (under bwrap unless opted out) and its job folder."""

    def __init__(self, *, isolated: bool):
        self.isolated = isolated
        _remove_stale_roots()
        self.root = Path(tempfile.mkdtemp(prefix=f"rl-sandbox-{os.getpid()}-"))
        self.job = self.root / "job"
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.uid = sandbox_uid()  # its own: no other sandbox spends its process limit

    def start(self) -> None:
        self.job.mkdir(exist_ok=True)
        if self.isolated and os.geteuid() == 0:
            os.chown(self.job, self.uid, self.uid)
        self.reset()
        argv = [sys.executable, "-m", "rl_pipeline.zygote"]
        log = open(self.root / "zygote.log", "ab")
        if self.isolated:
            cmd = sandbox_command(argv + ["--job-dir", JOB_MOUNT, "--isolated"], job_dir=self.job, uid=self.uid)
            env = {}
        else:
            from rl_pipeline.env import scrubbed_env
            cmd = argv + ["--job-dir", str(self.job)]
            env = scrubbed_env() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                     start_new_session=True)
        log.close()
        self.ready = False

    def _reply(self, timeout_s: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        return json.loads(line) if line else None

    def wait_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if not self.ready:
            reply = self._reply(ZYGOTE_START_S)
            if not reply or not reply.get("ready"):
                tail = (self.root / "zygote.log").read_text(errors="replace")[-LOG_TAIL:]
                self.kill()
                raise JobFailed("the sandbox did not start", tail)
            self.ready = True

    def reset(self) -> None:
        """Empty the job folder (never following a link the sandbox made) and lay out a fresh one."""
        for entry in os.scandir(self.job):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        for name, owner in (("in", 0), ("out", self.uid), ("tmp", self.uid), ("home", self.uid)):
            (self.job / name).mkdir(mode=0o755 if name == "in" else 0o700)
            if self.isolated and os.geteuid() == 0:
                os.chown(self.job / name, owner, owner)

    def run(self, request: dict) -> dict:
        """Run one job; the fork server's report, or JobFailed when the sandbox itself failed."""
        self.wait_ready()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._reply(request["timeout_s"] + ZYGOTE_GRACE_S)
        if reply is None:
            self.kill()
            raise JobFailed(f"the sandbox stopped answering after {request['timeout_s']:.0f}s; it was killed")
        return reply

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc, self.ready = None, False

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- inputs
_SPLITS: dict[tuple[str, str, int], tuple[int, dict, dict, str]] = {}
_HASHES: dict[tuple[str, int, int], str] = {}


def load_data(task: str, data_dir: str, split_size: int) -> tuple[dict, dict, str]:
    """The task's splits (`split_size` problems in eval and held-out), their hashes and the training
    split as JSON lines (what the sandbox gets), kept in memory while the manifest is unchanged."""
    from rl_pipeline.data import load_splits, split_hash

    sizes = eval_sizes(split_size)
    manifest = splits_folder(data_dir, task, sizes) / MANIFEST
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else -1
    cached = _SPLITS.get((task, data_dir, split_size))
    if cached is None or cached[0] != stamp or stamp == -1:
        splits = load_splits(task, data_dir=data_dir, sizes=sizes)
        hashes = {name: split_hash(splits[name]) for name in ("train", "eval", "heldout")}
        stamp = manifest.stat().st_mtime_ns if manifest.exists() else -1
        train_jsonl = "".join(json.dumps(row) + "\n" for row in splits["train"].to_list())
        cached = _SPLITS[(task, data_dir, split_size)] = (stamp, splits, hashes, train_jsonl)
    return cached[1:]


def file_hash(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def training_key(scaffold, base_dir: Path, train_hash: str, seed: int) -> str:
    """Hash of everything that changes the trained policy, the training budget included; sampling
    knobs are not in it."""
    base = json.loads((base_dir / "pretrain.json").read_text()) if (base_dir / "pretrain.json").exists() else {}
    weights = base_dir / "model.safetensors"
    parts = {
        "code": TRAIN_CODE_VERSION,
        "base": file_hash(weights) if weights.exists() else str(base),
        "knobs": scaffold.training_knobs(),
        "reward.py": (scaffold.path / "reward.py").read_text(),
        "prompt.py": (scaffold.path / "prompt.py").read_text(),
        "train": train_hash,
        "train_completions": scaffold.train_completions,
        "seed": seed,
    }
    if (scaffold.path / DATA_FILE).is_file():  # a scaffold without one keeps the keys it had
        parts[DATA_FILE] = (scaffold.path / DATA_FILE).read_text()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def pending_training(scaffold, base_dir: Path, data_dir: str, cache_dir: str, seed: int, split_size: int) -> str | None:
    """The training key a job on `scaffold` would train under, or None when a policy of that key is
    cached already; told without loading the data: the training split's hash is the one its
    manifest holds."""
    train_hash = split_hashes(data_dir, scaffold.task, eval_sizes(split_size))["train"]
    key = training_key(scaffold, base_dir, train_hash, seed)
    return None if (Path(cache_dir) / key).is_dir() else key


# ----------------------------------------------------------------------------- outputs
def _inside(job: Path, rel: str, *, max_bytes: int) -> Path:
    """A regular file the sandbox wrote under `job`: no link out of it, not larger than max_bytes."""
    path = job / rel
    resolved = path.resolve()
    if not resolved.is_relative_to(job.resolve()) or any(p.is_symlink() for p in [path, *path.parents]
                                                          if p.is_relative_to(job)):
        raise JobFailed(f"the sandbox returned {rel} as a link out of its folder")
    if not path.is_file():
        raise JobFailed(f"the sandbox returned no {rel}")
    if path.stat().st_size > max_bytes:
        raise JobFailed(f"the sandbox returned a {rel} of {path.stat().st_size} bytes (at most {max_bytes})")
    return path


def check_prompts(job: Path, counts: dict[str, int]) -> dict[str, list[str]]:
    """prompts.json: for every split asked, one non-empty string per question."""
    try:
        prompts = json.loads(_inside(job, "out/prompts.json", max_bytes=MAX_PROMPTS_BYTES).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise JobFailed(f"prompts.json from the sandbox is not JSON: {err}") from None
    if not isinstance(prompts, dict) or set(prompts) != set(counts):
        raise JobFailed(f"prompts.json from the sandbox must hold exactly the splits {sorted(counts)}")
    for split, n in counts.items():
        got = prompts[split]
        if not isinstance(got, list) or len(got) != n or not all(isinstance(p, str) and p for p in got):
            raise JobFailed("prompt.py: format_prompt() must return a non-empty string for every question "
                            f"({split}: expected {n} strings)")
    return prompts


def _tensor_specs(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}


def _number(value, kind=float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return kind(value) if ok else None


def check_policy(job: Path, base_dir: Path) -> tuple[Path, dict]:
    """The trained weights the sandbox returned, checked against the base; and its training summary
    reduced to numbers (it is informational: nothing is decided on it)."""
    base_weights = base_dir / "model.safetensors"
    weights = _inside(job, "out/policy/model.safetensors", max_bytes=2 * base_weights.stat().st_size + 2 ** 20)
    try:
        specs = _tensor_specs(weights)
    except Exception as err:  # noqa: BLE001 - whatever the parser says, it is not our format
        raise JobFailed(f"model.safetensors from the sandbox is not a safetensors file ({err})") from None
    base_specs = _tensor_specs(base_weights)
    if specs != base_specs:
        diff = sorted(set(specs) ^ set(base_specs)) or sorted(k for k in specs if specs[k] != base_specs[k])
        raise JobFailed(f"model.safetensors from the sandbox does not match the base's tensors (first: {diff[:3]})")
    try:
        config = json.loads(_inside(job, "out/policy/config.json", max_bytes=2 ** 20).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise JobFailed(f"config.json from the sandbox is not JSON: {err}") from None
    base_config = json.loads((base_dir / "config.json").read_text())
    if not isinstance(config, dict):
        raise JobFailed("config.json from the sandbox is not a JSON object")
    changed = sorted(k for k in set(config) | set(base_config)
                     if k not in CONFIG_FREE_KEYS and config.get(k) != base_config.get(k))
    if changed:
        raise JobFailed(f"config.json from the sandbox differs from the base's in {', '.join(changed[:5])}")
    try:
        raw = json.loads(_inside(job, "out/policy/training.json", max_bytes=2 ** 20).read_text())
    except (ValueError, UnicodeDecodeError):
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    timings = raw.get("timings") if isinstance(raw.get("timings"), dict) else {}
    rewards = raw.get("mean_reward") if isinstance(raw.get("mean_reward"), list) else []
    summary = {
        "steps": _number(raw.get("steps"), int),
        "completions": _number(raw.get("completions"), int),
        "final_loss": _number(raw.get("final_loss")),
        "mean_reward": [_number(r) for r in rewards[:10000]],
        "timings": {k: _number(timings.get(k)) for k in ("train_total_s", "rollout_s", "training_steps_s")},
    }
    return weights, summary


def weight_change(base_weights: Path, weights: Path) -> float:
    """How far training moved the policy: the L2 norm of the weights' change over the base's norm,
    all tensors as one vector. About 2e-4 where 768 completions at TRL's lr 1e-6 leave the answers as
    they were, 6e-3 at 3.42e-5 where greedy answers go from none well-formed to most."""
    import torch
    from safetensors.torch import load_file

    base, trained = load_file(base_weights), load_file(weights)
    change = sum(float(torch.linalg.vector_norm(trained[k].float() - t.float())) ** 2 for k, t in base.items())
    norm = sum(float(torch.linalg.vector_norm(t.float())) ** 2 for t in base.values())
    return math.sqrt(change / norm) if norm > 0 else 0.0


def cache_policy(weights: Path, summary: dict, base_dir: Path, cache_dir: Path) -> None:
    """Checked weights plus the base's own config and tokenizer files, renamed into place whole."""
    # Another run that cached the same key first keeps its entry: it passed the same checks.
    with replacing_dir(cache_dir, replace=False) as tmp:
        for item in base_dir.iterdir():
            if item.is_file() and item.name != "model.safetensors" and not item.name.endswith((".bin", ".pt", ".pkl")):
                shutil.copyfile(item, tmp / item.name)
        shutil.copyfile(weights, tmp / "model.safetensors")
        (tmp / "training.json").write_text(json.dumps(summary, indent=2))


# ----------------------------------------------------------------------------- one job
def _sandbox_failure(job_dir: Path, report: dict, limits: dict, timeout_s: float, work: str) -> JobFailed:
    log = job_dir / "log.txt"
    tail = log.read_text(errors="replace")[-LOG_TAIL:] if log.is_file() and not log.is_symlink() else ""
    error = job_dir / "out" / "error.json"
    if report["timed_out"]:
        return JobFailed(f"scaffold code timed out after {timeout_s:.0f}s, the safety limit for {work}; the run "
                         "failed rather than train less, and every process of the sandboxed job was killed", tail)
    if error.is_file() and not error.is_symlink() and error.stat().st_size < 2 ** 20:
        try:
            data = json.loads(error.read_text())
            return JobFailed(str(data["reason"])[:2000], str(data.get("traceback"))[-20000:])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass
    if report["signal"] in ("SIGXCPU", "SIGKILL") and report["cpu_s"] >= limits["cpu_s"]:
        return JobFailed(f"scaffold code ran past its CPU time limit ({limits['cpu_s']:.0f}s) and was killed", tail)
    if report["signal"]:
        return JobFailed(f"scaffold code was killed by {report['signal']} (memory limit "
                         f"{limits['memory_gb']:g} GiB?)", tail)
    return JobFailed(f"scaffold code exited with code {report['exit_code']} without its outputs", tail)


def _copy_in(src: Path, dst: Path, **kwargs) -> None:
    """Copy an input into the job folder: contents only (no owner, no mode), readable by the
    sandbox's uid, writable by root alone."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile, symlinks=False, **kwargs)
    for folder, dirs, files in os.walk(dst):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def run_job(job: dict, sandbox: Sandbox) -> dict:
    """Everything the trusted side does for one job; raises JobFailed (or another error) on failure."""
    import torch

    from model import default_device, load_policy, load_tokenizer
    from rl_pipeline.evaluate import evaluate
    from rl_pipeline.scaffold import load_scaffold

    torch.set_num_threads(job["threads"])
    timings: dict[str, float] = {}
    start = time.perf_counter()
    scaffold = load_scaffold(job["scaffold"], job["overrides"], import_code=False)
    splits, hashes, train_jsonl = load_data(scaffold.task, job["data_dir"], job["split_size"])
    base_dir = Path(job["base"])
    key = training_key(scaffold, base_dir, hashes["train"], job["train_seed"])
    cache_dir = Path(job["cache_dir"]) / key
    train = not cache_dir.is_dir()
    if not train:
        try:
            mark_used(cache_dir)
        except FileNotFoundError:  # deleted under a cache limit since: trained again
            train = True
    score_eval = job.get("score_eval", True)
    questions = {"eval": list(splits["eval"]["question"])} if score_eval else {}
    if job["heldout"]:
        questions["heldout"] = list(splits["heldout"]["question"])
    if job.get("calibration"):
        questions["calibration"] = list(splits["calibration"]["question"])

    # The untrusted job: copy its inputs in (never an answer of eval or held-out).
    sandbox.reset()
    inputs = sandbox.job / "in"
    _copy_in(scaffold.path, inputs / "scaffold", ignore=shutil.ignore_patterns(".git", "__pycache__"))
    if train:
        _copy_in(base_dir, inputs / "base")
        (inputs / "train.jsonl").write_text(train_jsonl)
    timeout_s = job["limits"]["train_s" if train else "prompts_s"]
    (inputs / "request.json").write_text(json.dumps({
        "overrides": job["overrides"], "questions": questions, "train": train,
        "completions": scaffold.train_completions, "seed": job["train_seed"]}))
    limits = {"memory_gb": job["memory_gb"], "cpu_s": timeout_s * job["threads"] + 10, "processes": 64}
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    report = sandbox.run({"timeout_s": timeout_s, "threads": job["threads"], "limits": limits})
    timings["sandbox_s"] = time.perf_counter() - start
    log = sandbox.job / "log.txt"
    if log.is_file() and not log.is_symlink():
        with open(log, "rb") as src:
            src.seek(max(0, log.stat().st_size - 2 ** 20))
            (Path(job["out"]) / "sandbox.log").write_bytes(src.read())
    if report["exit_code"] != 0 or report["timed_out"]:
        work = (f"training on {scaffold.train_completions} completions and formatting the prompts" if train
                else "formatting the prompts")
        raise _sandbox_failure(sandbox.job, report, limits, timeout_s, work)

    # What came back, checked before it is used.
    start = time.perf_counter()
    prompts = check_prompts(sandbox.job, {split: len(q) for split, q in questions.items()})
    if train:
        weights, summary = check_policy(sandbox.job, base_dir)
        summary["weight_change"] = weight_change(base_dir / "model.safetensors", weights)
        cache_policy(weights, summary, base_dir, cache_dir)
        mark_used(cache_dir)
        timings.update({f"train_{k}": v for k, v in summary["timings"].items() if v is not None})
        if job.get("cache_gb"):
            try:
                evicted = prune(cache_dir.parent, int(job["cache_gb"] * 2 ** 30), keep=cache_dir)
            except OSError as err:  # housekeeping: the run itself is fine, and its result stands
                print(f"training cache over its limit, not pruned: {err}", flush=True)
                evicted = []
            if evicted:
                print(f"training cache over its limit ({job['cache_gb']:g} GiB): deleted the {len(evicted)} "
                      f"least recently used policies", flush=True)
    record = json.loads((cache_dir / "training.json").read_text())
    if record.get("weight_change") is None:
        # A policy cached before the measure was kept: measured once, and written into its record
        # (whole, by rename) so the next job that reads the entry does not measure it again.
        record["weight_change"] = weight_change(base_dir / "model.safetensors", cache_dir / "model.safetensors")
        write_atomic(cache_dir / "training.json", json.dumps(record, indent=2))
    training = {"key": key, "cached": not train, "train_seed": job["train_seed"],
                "budget_completions": scaffold.train_completions} | record
    sandbox.reset()
    timings["check_s"] = time.perf_counter() - start

    start = time.perf_counter()
    policy, tokenizer = load_policy(cache_dir, device=default_device()), load_tokenizer(cache_dir)
    evaluation = None
    if score_eval:
        evaluation = evaluate(policy, tokenizer, scaffold, splits["eval"], prompts["eval"], seeds=job["seeds"],
                              split="eval")
        timings["eval_s"] = time.perf_counter() - start
    heldout = None
    if job["heldout"]:
        start = time.perf_counter()
        heldout = evaluate(policy, tokenizer, scaffold, splits["heldout"], prompts["heldout"], seeds=job["seeds"],
                           split="heldout")
        timings["heldout_s"] = time.perf_counter() - start
    calibration = None
    if job.get("calibration"):
        from rl_pipeline.data import split_hash

        start = time.perf_counter()
        calibration = (evaluate(policy, tokenizer, scaffold, splits["calibration"], prompts["calibration"],
                                seeds=job["seeds"], split="calibration"), split_hash(splits["calibration"]))
        timings["calibration_s"] = time.perf_counter() - start
    result = result_schema.ok_result(job, scaffold, training, evaluation, heldout, hashes, timings, calibration)
    result["sandbox"] = {"isolated": sandbox.isolated}
    return result


def do_job(job: dict, sandbox: Sandbox) -> None:
    """Run one job with its output going to out/worker.log, and write its result.json."""
    out = Path(job["out"])
    start = time.perf_counter()
    saved = os.dup(1), os.dup(2)
    log = os.open(out / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        result = run_job(job, sandbox)
    except JobFailed as err:
        result = result_schema.failed_result(job, str(err), err.trace)
    except Exception as err:  # noqa: BLE001 - every failure becomes a result the parent can read
        result = result_schema.failed_result(job, f"{type(err).__name__}: {err}", traceback.format_exc())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
    if not sandbox.isolated:
        result.setdefault("warnings", []).append(result_schema.NO_SANDBOX_WARNING)
    result["timings"]["total_s"] = round(time.perf_counter() - start, 3)
    result_schema.write_result(out, result)


def _exit_on_eof(fd: int) -> None:
    """The parent holds the other end of `fd`: when it is gone (even by kill -9), so are we (and
    with us the sandbox, which dies with its parent)."""
    while os.read(fd, 1):
        pass
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trusted worker of the runner (started by rl_pipeline.run)")
    parser.add_argument("--lifeline", type=int, required=True, help="fd whose end of file means the parent died")
    parser.add_argument("--no-sandbox", action="store_true", help="run scaffold code WITHOUT isolation")
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_on_eof, args=(args.lifeline,), daemon=True).start()
    requests, replies = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)

    sandbox = Sandbox(isolated=not args.no_sandbox)
    sandbox.start()  # its imports run while ours do
    import rl_pipeline.evaluate  # noqa: F401 - torch, transformers and the evaluator, once
    import rl_pipeline.data  # noqa: F401
    import model  # noqa: F401

    gc.collect()
    gc.freeze()  # what the imports made is never garbage: no collection walks it again
    try:
        sandbox.wait_ready()
        replies.write(json.dumps({"ready": True}) + "\n")
    except JobFailed as err:
        replies.write(json.dumps({"ready": False, "reason": str(err), "log": err.trace}) + "\n")
        sandbox.close()
        return 1
    try:
        for line in requests:
            do_job(json.loads(line), sandbox)
            replies.write(json.dumps({"done": True}) + "\n")
    finally:
        sandbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
