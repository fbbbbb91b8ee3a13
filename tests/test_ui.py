"""`researcher ui` stops its whole process tree: mlflow ui, uvicorn and the huey consumers.

A real `researcher ui` on a free port, a real MLflow server answering HTTP, real signals; what
survives is read from the process table (psutil), not from what the command says it did.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

START_S = 240  # mlflow ui on a busy 2-core machine takes tens of seconds to answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_stopping_researcher_ui_stops_the_whole_mlflow_tree(tmp_path, stop):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", f"runs_dir={tmp_path}", "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tree: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + START_S
        while not answers(f"http://127.0.0.1:{port}/health"):
            assert ui.poll() is None, ui.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "researcher ui never answered"
            time.sleep(0.5)
        time.sleep(3)  # the job runner starts its consumers after the server answers
        tree = {p.pid: p for p in psutil.Process(ui.pid).children(recursive=True)}
        names = " ".join(" ".join(p.cmdline()) for p in tree.values())
        assert "mlflow" in names and "uvicorn" in names, names  # the tree we mean to stop is there

        os.kill(ui.pid, stop)
        code = ui.wait(timeout=60)
        deadline = time.monotonic() + 30  # the guard's grace period is 10 s, then SIGKILL
        while alive(list(tree.values())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive(list(tree.values())) == []
        assert not answers(f"http://127.0.0.1:{port}/health")
        assert code == (-stop if stop == signal.SIGKILL else 128 + signal.SIGTERM)  # stopped, not crashed
    finally:
        for p in [*tree.values(), psutil.Process(ui.pid) if ui.poll() is None else None]:
            if p is not None:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_run_tree_stops_descendants_that_left_its_session(stop):
    """The guard behind `researcher ui`, on a small tree: a child in its own session (as mlflow's
    job runners are) and a grandchild whose parent exits (reparented to the guard) go too."""
    tree_cmd = "sleep 300 & setsid sleep 301 & (sleep 302 &) ; wait"
    script = ("import sys; from harness.process_tree import run_tree; "
              f"sys.exit(run_tree(['sh', '-c', {tree_cmd!r}], grace_s=2))")
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while len([p for p in tree if p.name() == "sleep"]) < 3:
            assert time.monotonic() < deadline, [p.cmdline() for p in tree]
            time.sleep(0.1)
            tree = psutil.Process(parent.pid).children(recursive=True)
        assert len({os.getsid(p.pid) for p in tree if p.name() == "sleep"}) == 2  # one left the session
        os.kill(parent.pid, stop)
        code = parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(tree) == []
        assert code == (-stop if stop == signal.SIGKILL else 128 + signal.SIGTERM)
    finally:
        for p in [*tree, psutil.Process(parent.pid) if parent.poll() is None else None]:
            if p is not None:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
