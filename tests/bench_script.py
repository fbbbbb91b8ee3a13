"""A script under bench/ run as a user runs it from the repository: its own process, the offline
environment our entry points set, output captured for the test to read."""

import os
import subprocess
import sys
from pathlib import Path

from rl_pipeline.env import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[1]


def bench_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / name), *args], cwd=REPO,
                          env=os.environ | OFFLINE_ENV, capture_output=True, text=True, timeout=timeout)
