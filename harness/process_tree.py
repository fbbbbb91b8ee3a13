"""Run a command as a process tree that stops as one, whatever the command starts.

`mlflow ui` starts uvicorn and several huey consumers, some in sessions of their own; stopping
only the process we started leaves the rest running. So the command runs under a guard process
(this module run with `python -m`), which is a child subreaper: every process in the tree, even
one whose parent has exited or that left our process group, stays the guard's descendant. When
the guard gets SIGTERM, SIGINT or SIGHUP, or the process that started it dies (PR_SET_PDEATHSIG,
so even a `kill -9` of `researcher ui` is covered), it sends SIGTERM to every descendant, SIGKILL
to those still there after a grace period, and reaps them all before it exits.

    code = run_tree(["mlflow", "ui", "--port", "5000"])    # returns when the command ends or we are stopped
    python -m harness.process_tree --parent PID -- CMD...  # the guard (what run_tree starts)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

GRACE_S = 10.0
POLL_S = 0.05
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


# ---------------------------------------------------------------- the caller's side

def run_tree(command: list[str], *, grace_s: float = GRACE_S, env: dict | None = None) -> int:
    """Run `command` under a guard until it ends; SIGTERM, SIGINT or SIGHUP here stop its whole tree.

    Returns the command's exit code (128 + the signal number when a signal stopped it).
    """
    guard = subprocess.Popen([sys.executable, "-m", "harness.process_tree", "--parent", str(os.getpid()),
                              "--grace-s", str(grace_s), "--", *command], env=env, start_new_session=True)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            guard.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        return guard.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the guard

class _Stop(Exception):
    pass


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _reap() -> dict[int, int]:
    """Collect every exited child without blocking: {pid: exit code}."""
    done = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = os.waitstatus_to_exitcode(status)


def _signal_all(sig: int) -> None:
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def _gone(deadline: float) -> bool:
    """Reap until no descendant is left (True) or `deadline` passes (False)."""
    while True:
        _reap()
        if not psutil.Process().children(recursive=True):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def stop_tree(grace_s: float) -> None:
    """SIGTERM every descendant, SIGKILL what is left after `grace_s`, and reap them all."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _signal_all(signal.SIGTERM)
    if not _gone(time.monotonic() + grace_s):
        _signal_all(signal.SIGKILL)
        _gone(time.monotonic() + grace_s)


def guard(command: list[str], parent: int, grace_s: float) -> int:
    """Run `command`, wait for it, and stop its whole tree when it ends or when we are told to."""
    def stop(signum, _frame):
        for sig in STOP_SIGNALS:  # a second signal must not interrupt the stopping
            signal.signal(sig, signal.SIG_IGN)
        raise _Stop(signum)

    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    code = 128 + signal.SIGTERM
    try:
        if os.getppid() != parent:  # the parent died before PDEATHSIG was armed
            return code
        code = subprocess.Popen(command).wait()
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
    except _Stop as stopped:
        code = 128 + stopped.args[0]
    stop_tree(grace_s)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.process_tree", description=__doc__.split("\n")[0])
    parser.add_argument("--parent", type=int, required=True, help="the pid whose death stops the tree")
    parser.add_argument("--grace-s", type=float, default=GRACE_S)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    return guard(command, args.parent, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
