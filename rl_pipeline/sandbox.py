"""The sandbox for scaffold code: bubblewrap namespaces, an unprivileged uid, rlimits.

Scaffold code (prompt.py, reward.py, any scaffold file to come) is untrusted. It runs only in a
process started here, made of OS mechanisms rather than Python checks:

- bubblewrap (`bwrap`) gives it its own mount, pid, network, ipc and uts namespaces. The mount
  namespace holds the system, the Python install and the project's code packages read-only, and
  one writable folder, the job folder (`/job`); the splits, the base model, the training cache,
  other runs' folders and the project checkout itself are not in it. The network namespace has
  only its own loopback, so no port of the host (127.0.0.1 included) can be reached.
- It runs as an unprivileged uid/gid of its own, SANDBOX_UID_BASE plus the pid of the worker that
  started it, with no capabilities and `no_new_privs`: bwrap sets up the mounts as root, then
  `setpriv` drops to that uid before any Python starts, so files keep their host permissions and
  `RLIMIT_NPROC` counts (root is exempt from it). That limit counts every process and thread of a
  uid machine-wide, so a shared uid (every sandbox as nobody) let a fork bomb in one sandbox fail
  the jobs of every other one on the machine (a campaign's rounds beside the tests, parallel
  campaigns, Ray workers). The worker's pid is unique while it lives, and the sandbox dies with it.
- Its environment is built from nothing (`--clearenv`): no credential can be inherited.
- It dies with the process that started it (`--die-with-parent`; the pid namespace ends with it).
- Each job runs in a process forked for it, with limits on address space, CPU time, processes,
  open files and file size (see `apply_limits`).

`make setup` installs bubblewrap. Where it is missing or does not work, `check_sandbox` raises
`SandboxUnavailable` with what to do; only an explicit opt-out runs scaffold code without it.

    argv = sandbox_command(python_argv, job_dir=Path("/tmp/rl-sandbox-x/job"))
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from rl_pipeline.env import CHILD_ENV

SANDBOX_UID_BASE = 1_000_000  # above any account's uid; plus a pid (at most 2^22) it stays far below 2^32
JOB_MOUNT = "/job"
CODE_MOUNT = "/code"
# The project's packages the untrusted side imports (never harness/, never runs/).
CODE_PACKAGES = ("rl_pipeline", "model")
# Files of the host's /etc that Python and the libraries read; nothing else of /etc is visible.
ETC_FILES = ("ld.so.cache", "passwd", "group", "nsswitch.conf", "localtime", "hosts")
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
PROJECT = Path(__file__).resolve().parents[1]


def sandbox_uid() -> int:
    """The uid (and gid) of the sandbox this process (a runner's worker) starts."""
    return SANDBOX_UID_BASE + os.getpid()


def is_sandbox_uid(uid: int) -> bool:
    return uid >= SANDBOX_UID_BASE


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built on this machine; the message says what to do."""


def sandbox_env() -> dict[str, str]:
    """The whole environment of the sandboxed process: nothing inherited, no credential."""
    return CHILD_ENV | {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": CODE_MOUNT,
        "HOME": f"{JOB_MOUNT}/home",
        "TMPDIR": f"{JOB_MOUNT}/tmp",
        "HF_HOME": f"{JOB_MOUNT}/home/hf",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLCONFIGDIR": f"{JOB_MOUNT}/tmp",
        "LANG": "C.UTF-8",
        "USER": "sandbox",  # the uid has no passwd entry: getpass.getuser() reads this first
        "LOGNAME": "sandbox",
    }


def _python_roots() -> list[str]:
    """Folders the interpreter and its packages live in (the venv and the install it points at)."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    roots.add(sys.prefix)  # the venv as named, so its bin/python symlink resolves
    return sorted(r for r in roots if r not in ("/", "/usr") and os.path.isdir(r))


def sandbox_command(argv: list[str], *, job_dir: Path, uid: int | None = None) -> list[str]:
    """The bwrap command line that runs `argv` (an absolute program and its arguments) in the
    sandbox as `uid` (`sandbox_uid()` by default; when run as root), with `job_dir` mounted
    writable at /job."""
    uid = sandbox_uid() if uid is None else uid
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(_MISSING)
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv", "--proc", "/proc", "--dev", "/dev"]
    made: set[str] = set()

    def parents(dest: str) -> None:
        # bwrap would create missing parents with the host's modes (/root is 0700): make them 0755.
        parts = Path(dest).parts[1:-1]
        for i in range(1, len(parts) + 1):
            folder = "/" + "/".join(parts[:i])
            if folder not in made:
                made.add(folder)
                args.extend(["--perms", "0755", "--dir", folder])

    for folder in SYSTEM_DIRS:
        if os.path.lexists(folder):
            args.extend(["--ro-bind", folder, folder] if not os.path.islink(folder)
                        else ["--symlink", os.readlink(folder), folder])
    for name in ETC_FILES:
        args.extend(["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"])
    for root in _python_roots():
        parents(root)
        args.extend(["--ro-bind", root, root])
    for package in CODE_PACKAGES:
        parents(f"{CODE_MOUNT}/{package}")
        args.extend(["--ro-bind", str(PROJECT / package), f"{CODE_MOUNT}/{package}"])
    args.extend(["--bind", str(job_dir), JOB_MOUNT, "--remount-ro", "/", "--chdir", JOB_MOUNT])
    for name, value in sandbox_env().items():
        args.extend(["--setenv", name, value])
    if os.geteuid() == 0:
        # bwrap runs privileged (no user namespace): keep only what setpriv needs to drop to the uid.
        args.extend(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                     "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"])
    else:
        # Not root: a user namespace maps our own (already unprivileged) uid; bwrap drops all caps.
        args[1:1] = ["--unshare-user"]
        args.append("--")
    return args + argv


_MISSING = ("bubblewrap (bwrap) is not installed: run `make setup` (or `apt-get install -y bubblewrap`), "
            "or pass sandbox=False (`--no-sandbox`) to run scaffold code WITHOUT isolation")


@functools.cache
def check_sandbox() -> None:
    """Raise SandboxUnavailable unless a sandboxed `true` runs here (checked once per process)."""
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(_MISSING)
    if os.geteuid() == 0 and not os.path.exists("/usr/bin/setpriv"):
        raise SandboxUnavailable("/usr/bin/setpriv (util-linux) is missing: the sandbox cannot drop to an "
                                 "unprivileged uid")
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"rl-sandbox-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(sandbox_command(["/bin/true"], job_dir=probe), capture_output=True, text=True,
                              timeout=60)
    finally:
        probe.rmdir()
    if done.returncode != 0:
        raise SandboxUnavailable(f"bubblewrap does not work here ({done.stderr.strip()}); namespaces may be "
                                 "disabled. Fix that, or pass sandbox=False to run scaffold code WITHOUT isolation")


def apply_limits(*, memory_gb: float, cpu_s: float, processes: int, open_files: int = 1024,
                 file_gb: float = 8.0) -> None:
    """Limit the calling process (and what it starts): address space, CPU seconds (SIGXCPU, then
    SIGKILL a second later), processes of its uid, open files and the size of any file written."""
    def cap(which: int, value: int) -> None:
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value if which != resource.RLIMIT_CPU else value + 1))

    cap(resource.RLIMIT_AS, int(memory_gb * 1024 ** 3))
    cap(resource.RLIMIT_CPU, max(1, int(cpu_s)))
    cap(resource.RLIMIT_NPROC, processes)
    cap(resource.RLIMIT_NOFILE, open_files)
    cap(resource.RLIMIT_FSIZE, int(file_gb * 1024 ** 3))
    cap(resource.RLIMIT_CORE, 0)
