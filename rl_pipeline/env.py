"""The process environment every entry point and child process gets, set in one place.

Nothing we run reaches the internet (no hub downloads, no MLflow telemetry), idle OpenMP threads
sleep instead of spinning on a shared machine, and a child holds no credential of its parent.
A child that will have the cores to itself (pretraining, which its parent waits for) may let them
spin briefly instead: `spinning_env`, when `free_cores` says the cores are idle.
`use_offline_env()` must run before `transformers`, `mlflow` or torch's OpenMP load: every entry
point (the `researcher` command, `python -m serving`, bench scripts, the test suite) calls it first.

    from rl_pipeline.env import use_offline_env; use_offline_env()
    subprocess.Popen(cmd, env=scrubbed_env(), preexec_fn=die_with_parent)
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import time

# No hub or telemetry traffic; idle OpenMP threads sleep (on a shared 2-core machine spinning
# threads made torch 2x slower than one thread); tokenizers do not fork thread pools.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}
# What every child process we start gets on top: unbuffered output, so its log is current.
CHILD_ENV = OFFLINE_ENV | {"PYTHONUNBUFFERED": "1"}
# How long an idle OpenMP thread busy-waits for the next parallel region before it sleeps, in
# libgomp's spin iterations. Pretraining on two idle cores, 60 steps (2026-12-05): sleeping at
# once (PASSIVE) 20.6 s, about one thread's 22.0 s, as every small parallel region pays a wake-up;
# 3000 spins 14.5 s; 30000 12.6 s. Once another process wants the cores, spinning costs: beside one
# busy process, 26 s sleeping, 33 s at 3000 spins, 68 s at 30000; hence few spins, and only on
# cores found idle.
SPIN_COUNT = 3000
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE", re.IGNORECASE)
_PR_SET_PDEATHSIG = 1


def use_offline_env() -> None:
    """Set OFFLINE_ENV in this process, leaving any value the user set alone."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def scrubbed_env() -> dict[str, str]:
    """The parent's environment less anything that looks like a credential; CHILD_ENV on."""
    return {k: v for k, v in os.environ.items() if not _SECRET.search(k)} | CHILD_ENV


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that started it dies (call it in a
    child before exec, as a `preexec_fn`)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spinning_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with OpenMP's idle threads spinning `SPIN_COUNT` iterations before they sleep."""
    return {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"} | {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def free_cores(window_s: float = 0.3) -> float | None:
    """How many of this machine's cores stayed idle over the next `window_s` seconds (/proc/stat),
    or None where that cannot be read or counts other cores than this process may run on (a
    container's view of its host)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        with open("/proc/stat") as f:
            cores = sum(1 for line in f if re.match(r"cpu\d", line))
        if cores != len(os.sched_getaffinity(0)):
            return None
        all_0, idle_0 = sample()
        time.sleep(window_s)
        all_1, idle_1 = sample()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return cores * (idle_1 - idle_0) / (all_1 - all_0) if all_1 > all_0 else None


def idle_cores_env(env: dict[str, str], threads: int) -> tuple[dict[str, str], float | None]:
    """`env` for a child on `threads` threads that its parent waits for: `spinning_env(env)` where
    `free_cores` finds that many cores idle now, else `env`; and what `free_cores` read."""
    free = free_cores()
    return (spinning_env(env) if free is not None and free >= threads - 0.25 else env), free
