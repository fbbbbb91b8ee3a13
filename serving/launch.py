"""Start `researcher serve` in a child process for a test or a benchmark, and stop it after.

    from serving.launch import served

    with served("runs/models/base", env={"RESEARCHER_API_KEY": "k"}) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="k")      # base_url ends in /v1
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}])

The server binds 127.0.0.1 on a free port (or `port`), and `served` returns once GET /v1/models
answers; if the child dies first, or `timeout` passes, it raises `ServerFailed` with the tail of
the server's log. On exit the child's whole process group gets SIGTERM, then SIGKILL after 10 s.
The child also gets SIGKILL when the thread that entered `served` dies (PR_SET_PDEATHSIG), so a
test killed mid-way leaves no server behind.

Only the standard library and `rl_pipeline.env` (which imports no more) are imported here, so
importing this costs nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from rl_pipeline.env import CHILD_ENV, die_with_parent

REPO = Path(__file__).resolve().parents[1]
# a free port can be taken by someone else between our probe and the server's bind: retry then
_PORT_TRIES = 3


class ServerFailed(RuntimeError):
    """The server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    # the server needs the API key the runner's scrubbed environment would drop; rich wraps at 80
    # columns when not on a terminal: keep log lines whole
    out = dict(os.environ) | CHILD_ENV | {"COLUMNS": "200"}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url`, with any status (401 included)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def _start(model_dir: Path, port: int, args: Sequence[str], env: dict, log: Path,
           timeout: float) -> subprocess.Popen | None:
    """The server process once it answers; None when it exited because its port was taken."""
    cmd = [sys.executable, "-m", "serving", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if "address already in use" in _tail(log).lower():
                    return None
                raise ServerFailed(f"the server exited with code {proc.returncode} before answering:\n"
                                   f"{_tail(log)}")
            if _answers(url):
                return proc
            time.sleep(0.1)
        raise ServerFailed(f"the server did not answer {url} within {timeout:.0f}s:\n{_tail(log)}")
    except BaseException:  # a Ctrl-C while waiting included: leave no server behind
        _stop(proc)
        raise


@contextmanager
def served(model_dir: str | Path, *, port: int | None = None, env: Mapping[str, str | None] | None = None,
           timeout: float = 60.0, args: Sequence[str] = (), log_path: str | Path | None = None) -> Iterator[str]:
    """Serve `model_dir` in a child process; yields the base URL, `http://127.0.0.1:PORT/v1`.

    `env` is laid over this process's environment (a None value removes a variable), e.g. the API
    key; `args` are more `researcher serve` flags (`--served-name`, `--batch-window-ms`,
    `--threads`, ...); the server's output goes to `log_path`, or to a temporary file removed on
    exit. `port=None` picks a free one.
    """
    model_dir = Path(model_dir).resolve()
    child_env = _child_env(env)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="researcher-serve-", suffix=".log")
        os.close(fd)
        log, remove_log = Path(name), True
    else:
        log, remove_log = Path(log_path), False
    proc = None
    try:
        for _ in range(1 if port is not None else _PORT_TRIES):
            chosen = port if port is not None else free_port()
            proc = _start(model_dir, chosen, args, child_env, log, timeout)
            if proc is not None:
                break
        if proc is None:
            raise ServerFailed(f"the server could not bind its port:\n{_tail(log)}")
        yield f"http://127.0.0.1:{chosen}/v1"
    finally:
        if proc is not None:
            _stop(proc)
        if remove_log:
            log.unlink(missing_ok=True)
