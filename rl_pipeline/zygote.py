"""The warm untrusted side: a fork server that runs inside the sandbox, one fresh child per job.

Started once per runner (by rl_pipeline.worker, under bwrap: see rl_pipeline.sandbox), it imports
torch, transformers, trl, datasets and the training code, then waits for jobs. For each job it
forks a child, which closes the protocol pipes, sends its output to the job's log, takes its
limits (rl_pipeline.sandbox.apply_limits) and only then runs scaffold code
(rl_pipeline.sandbox_job). So no job pays the imports, and no job sees a module that an earlier
job's scaffold code patched: the fork server itself never runs scaffold code. When the child
ends, or its time is up, every other process in the sandbox's pid namespace is killed, so
nothing a job started outlives it.

Protocol (JSON lines): the server writes {"ready": true} once warm; then, per request line
{"timeout_s", "threads", "limits": {...}}, one reply {"exit_code", "signal", "timed_out",
"wall_s", "cpu_s"}. End of input ends the server.

    python -m rl_pipeline.zygote --job-dir /job [--isolated]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback

_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NAME = 1, 4, 15
# Process names (what `ps -o comm` shows): the fork server's, and its jobs' (inherited by their forks).
SERVER_NAME, JOB_NAME = b"rl-zygote", b"rl-job"


def _prctl(option: int, value) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _child(job_dir: str, request: dict, protocol: tuple[int, int]) -> None:
    """The forked child: nothing of the server's is left to it but the job folder."""
    code = 1
    try:
        for fd in protocol:
            os.close(fd)
        os.setsid()
        _prctl(_PR_SET_NAME, ctypes.c_char_p(JOB_NAME))
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        log = os.open(os.path.join(job_dir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        from rl_pipeline.sandbox import apply_limits
        from rl_pipeline.sandbox_job import run

        apply_limits(**request["limits"])
        code = run(job_dir, threads=request["threads"])
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _kill_the_rest(isolated: bool, pid: int) -> None:
    """Kill what the job left behind: inside the sandbox's own pid namespace, every process but
    this one and the namespace's init, again and again until none is left (a fork bomb refills
    the slots one kill frees); without the sandbox, the child's session only."""
    if not isolated:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    me = os.getpid()
    deadline = time.monotonic() + 60  # a process with a large address space takes a while to die
    while time.monotonic() < deadline:
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # stopped first, so none can fork meanwhile
            try:
                os.kill(-1, sig)
            except ProcessLookupError:
                pass
        if not [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]:
            return
        time.sleep(0.01)


def run_one(job_dir: str, request: dict, protocol: tuple[int, int], isolated: bool) -> dict:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(job_dir, request, protocol)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], request["timeout_s"])
    timed_out = not ready
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    os.close(pidfd)
    _kill_the_rest(isolated, pid)
    return {
        "exit_code": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
        "signal": signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "wall_s": round(time.perf_counter() - start, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def _warm_up(job_dir: str) -> None:
    """Import torch, transformers, trl, datasets and the job code, and save and load a tiny policy
    once, so that every forked job finds the imports done and the loading path's caches filled.
    One thread only: no OpenMP thread team may exist when the server forks. Then freeze what is
    in memory out of the garbage collector's sight, so no job pays to walk it."""
    import gc
    import shutil

    import torch

    import rl_pipeline.sandbox_job  # noqa: F401
    from model import build_policy, build_tokenizer, load_policy, load_tokenizer, save_policy

    torch.set_num_threads(1)
    folder = os.path.join(job_dir, "tmp", "warm-up")
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy("tiny", tokenizer, seed=0), tokenizer, folder)
    load_policy(folder), load_tokenizer(folder)
    shutil.rmtree(folder, ignore_errors=True)
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fork server for sandboxed scaffold jobs")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--isolated", action="store_true", help="running in the sandbox's own pid namespace")
    args = parser.parse_args(argv)

    # The protocol gets its own descriptors; fds 0 and 1 go to /dev/null and the log, so that no
    # library print can be read as a reply.
    requests, replies = os.dup(0), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    _prctl(_PR_SET_DUMPABLE, 0)  # a job (same uid) cannot ptrace or write this process's memory
    _prctl(_PR_SET_NAME, ctypes.c_char_p(SERVER_NAME))
    if not args.isolated:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    _warm_up(args.job_dir)

    reader = os.fdopen(requests, "r")
    writer = os.fdopen(replies, "w", buffering=1)
    writer.write(json.dumps({"ready": True}) + "\n")
    for line in reader:
        writer.write(json.dumps(run_one(args.job_dir, json.loads(line), (requests, replies), args.isolated)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
