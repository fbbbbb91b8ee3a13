"""The process environment every entry point and child process gets, set in one place.

Nothing we run reaches the internet (no hub downloads, no MLflow telemetry), idle OpenMP threads
sleep instead of spinning on a shared machine, and a child holds no credential of its parent.
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

# No hub or telemetry traffic; idle OpenMP threads sleep (on a shared 2-core machine spinning
# threads made torch 2x slower than one thread); tokenizers do not fork thread pools.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}
# What every child process we start gets on top: unbuffered output, so its log is current.
CHILD_ENV = OFFLINE_ENV | {"PYTHONUNBUFFERED": "1"}
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
