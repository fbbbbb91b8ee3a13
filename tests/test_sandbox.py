"""Hostile scaffolds against the real sandbox: real bwrap, real processes, no mocks.

Each case is a prompt.py or reward.py a researcher could write (it compiles and keeps the
functions the surface asks for). Every one must end as a failed run or an unchanged score, and
nothing outside the run's folder may change. Probes run at import of prompt.py and report what
they could do by raising, so the run fails fast with their findings in `reason`.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from fast_scaffold import COMPLETIONS, TEST_PRESET, with_budget

from model import build_policy, build_tokenizer, save_policy
from rl_pipeline.result import integrity_problem
from rl_pipeline.run import run_scaffold, time_limits
from rl_pipeline.sandbox import SandboxUnavailable, check_sandbox, is_sandbox_uid
from rl_pipeline.zygote import JOB_NAME, SERVER_NAME
from rl_pipeline.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
ARITH = REPO / "scaffolds" / "arith"
FAST = {"sampling.max_new_tokens": 6, "grpo.max_completion_length": 6}
FORMAT = "\ndef format_prompt(question):\n    return f'Q: {question}\\nA: '\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, root / "base")
    env = {"base": str(root / "base"), "data_dir": str(root / "data"), "cache_dir": str(root / "cache"),
           "seeds": [0], "timeout_s": 300.0}
    # Start the warm worker and sandbox now, so that the time limits below measure runs, not start-up.
    run_scaffold(scaffold(root / "warm", prompt="raise RuntimeError('warm')\n"), root / "warm-out", **env)
    return env


def scaffold(tmp_path: Path, prompt: str | None = None, reward: str | None = None) -> Path:
    dst = tmp_path / "scaffold"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    with_budget(dst, COMPLETIONS)
    if prompt is not None:
        (dst / "prompt.py").write_text(textwrap.dedent(prompt) + FORMAT)
    if reward is not None:
        (dst / "reward.py").write_text(textwrap.dedent(reward))
    return dst


def tree_hash(*roots) -> dict[str, str]:
    """sha256 of every file under `roots` (names and bytes)."""
    hashes = {}
    for root in map(Path, roots):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def another_runners(pid: int) -> bool:
    """Whether `pid` runs under a runner's trusted worker that this test process did not start (a
    campaign running beside the tests has sandboxes too). A process that escaped its sandbox has
    no worker above it, so it still counts."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        return any(p.pid not in ours and "rl_pipeline.worker" in " ".join(p.cmdline())
                   for p in psutil.Process(pid).parents())
    except psutil.Error:  # gone since it was listed
        return False


def sandbox_processes() -> list[int]:
    """Processes of a sandbox uid other than warm fork servers (jobs and what they started), less
    those of another runner's sandbox."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        starting = "rl_pipeline.zygote" in cmdline
        if is_sandbox_uid(int(fields["Uid"].split()[0])) and fields["Name"].strip() != SERVER_NAME.decode() \
                and not (starting and fields["Name"].strip() in ("python", "python3", "setpriv")):
            pids.append(int(entry.name))
    return [pid for pid in pids if not another_runners(pid)]


def test_scorer_patched_at_import_leaves_the_score_unchanged(tmp_path, env):
    # The measured attack: prompt.py replaces the scorer through sys.modules and a computed name.
    patch = """
        import sys
        _tasks = sys.modules.get("rl_" + "pipeline.tasks") or __import__("rl_" + "pipeline.tasks").tasks
        _real = _tasks.ArithTask.score
        def _always(self, completion, example):
            s = _real(self, completion, example)
            return type(s)(**{**s.__dict__, "correct": True}) if hasattr(s, "__dict__") else s._replace(correct=True)
        _tasks.ArithTask.score = _always
    """
    result = run_scaffold(scaffold(tmp_path, prompt=patch), tmp_path / "out", overrides=FAST, **env)
    assert result["status"] == "ok", result.get("reason")
    per_example = result["per_example"]
    assert result["metrics"]["accuracy"] == sum(sum(v) for v in per_example.values()) / len(per_example)
    assert result["metrics"]["accuracy"] < 0.5  # a random micro policy; the patched scorer would say 1.0
    # The fixed scorer, run here, agrees with every recorded verdict.
    task = get_task("arith")
    from rl_pipeline.data import load_splits
    examples = {row["id"]: row for row in load_splits("arith", data_dir=env["data_dir"])["eval"]}
    for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert task.score(record["completion"], examples[record["id"]]).correct == record["correct"]


def test_a_larger_split_size_scores_more_problems_beside_the_default_splits(tmp_path, env):
    default = run_scaffold(scaffold(tmp_path / "a"), tmp_path / "default", overrides=FAST, heldout=True, **env)
    larger = run_scaffold(scaffold(tmp_path / "b"), tmp_path / "larger", overrides=FAST, heldout=True,
                          split_size=240, **env)
    assert default["status"] == larger["status"] == "ok", (default.get("reason"), larger.get("reason"))
    assert len(default["per_example"]) == len(default["heldout"]["per_example"]) == 200
    assert len(larger["per_example"]) == len(larger["heldout"]["per_example"]) == 240
    # The same training data (so the same trained policy, from the cache), more of the same problems.
    assert larger["data_hashes"]["train"] == default["data_hashes"]["train"]
    assert larger["training"]["cached"] and larger["training"]["key"] == default["training"]["key"]
    assert set(default["per_example"]) < set(larger["per_example"])
    assert larger["data_hashes"]["eval"] != default["data_hashes"]["eval"]
    assert json.loads((tmp_path / "larger" / "job.json").read_text())["split_size"] == 240
    assert (Path(env["data_dir"]) / "arith-eval240-heldout240" / "manifest.json").is_file()
    assert (Path(env["data_dir"]) / "arith" / "manifest.json").is_file()  # not replaced


def test_probes_cannot_read_answers_write_outside_or_connect(tmp_path, env):
    run_scaffold(scaffold(tmp_path / "warm"), tmp_path / "first", overrides=FAST, **env)  # data, cache exist
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    data, base, cache = Path(env["data_dir"]), Path(env["base"]), Path(env["cache_dir"])
    targets = {
        "read_heldout": str(next((data / "arith").rglob("*.arrow"))),
        "read_base": str(base / "model.safetensors"),
        "read_other_run": str(tmp_path / "first" / "result.json"),
        "read_scorer_source_dir": str(REPO / "runs"),
    }
    writes = {
        "write_project": str(REPO / "rl_pipeline" / "evil.py"),
        "write_code_mount": "/code/rl_pipeline/evil.py",
        "write_base": str(base / "config.json"),
        "write_cache": str(next(cache.iterdir()) / "model.safetensors"),
        "write_other_run": str(tmp_path / "first" / "result.json"),
        "write_tmp": "/tmp/evil",
        "write_home": "/root/evil",
    }
    probe = f"""
        import json, os, socket
        found = {{}}
        for name, path in {targets!r}.items():
            try:
                open(path, "rb").read(16) if os.path.isfile(path) else os.listdir(path)
                found[name] = "READ"
            except OSError as err:
                found[name] = "denied"
        for name, path in {writes!r}.items():
            try:
                open(path, "ab").write(b"x")
                found[name] = "WROTE"
            except OSError as err:
                found[name] = "denied"
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2)
            found["connect"] = "CONNECTED"
        except OSError:
            found["connect"] = "denied"
        found["env"] = "SECRETS" if "sk-secret" in json.dumps(dict(os.environ)) else "denied"
        found["uid"] = "ROOT" if os.getuid() == 0 else "denied"
        found["answers"] = "ANSWERS" if "answer" in open("/job/in/request.json").read() else "denied"
        raise RuntimeError("PROBE" + json.dumps(found) + "END")
    """
    before = tree_hash(REPO / "rl_pipeline", REPO / "model", base, data, cache, tmp_path / "first")
    os.environ["OPENAI_API_KEY"] = "sk-secret"
    try:
        result = run_scaffold(scaffold(tmp_path, prompt=probe), tmp_path / "out", overrides=FAST, **env)
    finally:
        del os.environ["OPENAI_API_KEY"]
        listener.close()
    assert result["status"] == "failed"
    found = json.loads(result["reason"].split("PROBE", 1)[1].split("END", 1)[0])
    assert set(found) == set(targets) | set(writes) | {"connect", "env", "uid", "answers"}
    assert {k: v for k, v in found.items() if v != "denied"} == {}
    assert tree_hash(REPO / "rl_pipeline", REPO / "model", base, data, cache, tmp_path / "first") == before
    assert not (REPO / "rl_pipeline" / "evil.py").exists()


def test_fork_bomb_is_contained_and_leaves_nothing(tmp_path, env):
    bomb = """
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    """
    start = time.monotonic()
    result = run_scaffold(scaffold(tmp_path, prompt=bomb), tmp_path / "out", overrides=FAST,
                          **env | {"timeout_s": 15.0})
    assert time.monotonic() - start < 60
    assert result["status"] == "failed" and "timed out after 15s" in result["reason"]
    assert sandbox_processes() == []


RUN_SCAFFOLD = """
import json, sys
from rl_pipeline.run import run_scaffold
run_scaffold(sys.argv[1], sys.argv[2], overrides=json.loads(sys.argv[3]), **json.loads(sys.argv[4]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="uids per sandbox need root; without it the user namespace's uid is ours")
def test_a_fork_bomb_in_one_sandbox_leaves_another_sandbox_its_processes(tmp_path, env):
    """Two runners at once, as a campaign beside the tests or two Ray workers are: while one
    sandbox's fork bomb holds its whole process limit, the other's job still forks and trains."""
    bomb = scaffold(tmp_path / "bomb", prompt="import os, time\nwhile True:\n    try:\n        os.fork()\n"
                                              "    except OSError:\n        time.sleep(0.05)\n")
    other = subprocess.Popen([sys.executable, "-c", RUN_SCAFFOLD, str(bomb), str(tmp_path / "bomb-out"),
                              json.dumps(FAST), json.dumps(env | {"timeout_s": 120.0, "warm": False})],
                             stdout=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        # until the bomb's uid holds nearly its limit of 64 processes, machine-wide
        while not (bombs := sandboxed_under(other.pid)) or processes_of(next(iter(bombs.values()))) < 60:
            assert time.monotonic() < deadline and other.poll() is None, "the fork bomb never filled its limit"
            time.sleep(0.2)
        result = run_scaffold(scaffold(tmp_path / "fine"), tmp_path / "fine-out", overrides=FAST, **env)
        assert result["status"] == "ok", result.get("reason")
        assert len(set(bombs.values())) == 1 and len(set(sandboxed_under(os.getpid()).values())) == 2  # one each
    finally:
        other.kill()  # its worker, and with it the sandbox, dies with it
        other.wait()
    deadline = time.monotonic() + 30
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox_processes() == []


def processes_of(uid: int) -> int:
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


def sandboxed_under(pid: int) -> dict[int, int]:
    """pid -> uid of the sandbox processes under `pid`."""
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            uid = child.uids().real
        except psutil.Error:
            continue
        if is_sandbox_uid(uid):
            found[child.pid] = uid
    return found


def test_memory_bomb_is_a_failed_run(tmp_path, env):
    result = run_scaffold(scaffold(tmp_path, prompt="block = bytearray(20 * 1024 ** 3)\n"), tmp_path / "out",
                          overrides=FAST, **env)
    assert result["status"] == "failed" and "MemoryError" in result["reason"]


def test_busy_loop_past_the_limit_is_killed(tmp_path, env):
    start = time.monotonic()
    result = run_scaffold(scaffold(tmp_path, prompt="while True:\n    pass\n"), tmp_path / "out", overrides=FAST,
                          **env | {"timeout_s": 10.0})
    assert time.monotonic() - start < 40
    assert result["status"] == "failed" and "timed out after 10s" in result["reason"]
    assert sandbox_processes() == []


def test_weights_that_are_not_safetensors_are_refused(tmp_path, env):
    pickled = """
        import os, pickle, sys
        def _save(policy, tokenizer, path):
            os.makedirs(path, exist_ok=True)
            open(os.path.join(path, "model.safetensors"), "wb").write(pickle.dumps({"weights": 1}))
            open(os.path.join(path, "config.json"), "w").write("{}")
        sys.modules["rl_pipeline.train"].save_policy = _save
    """
    cache_before = sorted(os.listdir(env["cache_dir"])) if os.path.isdir(env["cache_dir"]) else []
    result = run_scaffold(scaffold(tmp_path, prompt=pickled), tmp_path / "out", overrides=FAST, **env)
    assert result["status"] == "failed" and "not a safetensors file" in result["reason"]
    assert (sorted(os.listdir(env["cache_dir"])) if os.path.isdir(env["cache_dir"]) else []) == cache_before


def test_a_patched_module_never_reaches_the_next_job(tmp_path, env):
    first = """
        import sys
        sys.modules["rl_pipeline.tasks"].LEAKED = True
        raise RuntimeError("first job done")
    """
    second = """
        import sys
        raise RuntimeError("LEAKED" if hasattr(sys.modules["rl_pipeline.tasks"], "LEAKED") else "clean")
    """
    a = run_scaffold(scaffold(tmp_path / "a", prompt=first), tmp_path / "a" / "out", overrides=FAST, **env)
    b = run_scaffold(scaffold(tmp_path / "b", prompt=second), tmp_path / "b" / "out", overrides=FAST, **env)
    assert "first job done" in a["reason"]
    assert b["status"] == "failed" and b["reason"].endswith("RuntimeError on import: clean")


def test_missing_bubblewrap_stops_with_a_clear_message(tmp_path, env, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    check_sandbox.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="make setup"):
            run_scaffold(scaffold(tmp_path), tmp_path / "out", overrides=FAST, **env | {"warm": False})
    finally:
        check_sandbox.cache_clear()


def test_integrity_problem():
    baseline = {"status": "ok", "data_hashes": {"train": "a", "eval": "b", "heldout": "c"}}
    good = baseline | {"scaffold": {"commit": "abc", "content_hash": "h" * 64}}
    assert integrity_problem(good, baseline, commit="abc", content_hash="h" * 64) is None
    assert "split 'eval'" in integrity_problem(good | {"data_hashes": {"train": "a", "eval": "x", "heldout": "c"}},
                                               baseline)
    assert "split 'heldout'" in integrity_problem(good | {"data_hashes": {"train": "a", "eval": "b"}}, baseline)
    assert "commit" in integrity_problem(good, baseline, commit="def")
    assert "content" in integrity_problem(good, baseline, content_hash="g" * 64)
    assert integrity_problem({"status": "failed"}, baseline) is None


def test_time_limit_comes_from_the_training_budget():
    limits = time_limits(768, seeds=3, heldout=False, cap=900)
    assert 400 < limits["train_s"] < 500 and limits["total_s"] < 900 and limits["prompts_s"] <= 30
    assert time_limits(8, seeds=3, heldout=False, cap=900)["train_s"] < 100  # proportional to the work
    assert time_limits(768, seeds=3, heldout=True, cap=45)["total_s"] == 45


@pytest.mark.slow
def test_hanging_reward_fails_within_the_budget_derived_limit(tmp_path, env):
    dst = scaffold(tmp_path, reward="import time\ndef rewards(c, e, s, w):\n    time.sleep(3600)\n")
    limit = time_limits(COMPLETIONS, seeds=1, heldout=False, cap=900)["train_s"]
    start = time.monotonic()
    result = run_scaffold(dst, tmp_path / "out", overrides=FAST, **env | {"timeout_s": 900.0})
    assert time.monotonic() - start < limit + 30
    assert result["status"] == "failed" and f"timed out after {limit:.0f}s, the safety limit for training on " \
        f"{COMPLETIONS} completions" in result["reason"]


@pytest.mark.slow
def test_no_sandbox_opt_out_says_so_on_every_round(tmp_path, env):
    result = run_scaffold(scaffold(tmp_path, prompt="raise RuntimeError('ran')\n"), tmp_path / "out",
                          overrides=FAST, **env | {"sandbox": False, "warm": False})
    assert result["status"] == "failed" and "ran" in result["reason"]
    assert any("WITHOUT isolation" in w for w in result["warnings"])


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_kill_9_of_the_campaign_leaves_no_process(tmp_path, env):
    hang = scaffold(tmp_path, prompt="import time\ntime.sleep(3600)\n")
    script = (f"from rl_pipeline.run import run_scaffold\n"
              f"run_scaffold({str(hang)!r}, {str(tmp_path / 'out')!r}, overrides={FAST!r}, **{env!r})\n")
    campaign = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        # Wait for the sandboxed job itself: a process named as a job, in this campaign's tree.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not _jobs(_descendants(campaign.pid)):
            time.sleep(0.5)
        tree = _descendants(campaign.pid)
        assert _jobs(tree), "the sandboxed job never started"
        assert len(tree) >= 4  # worker, bwrap, fork server, job
    finally:
        os.kill(campaign.pid, signal.SIGKILL)
        campaign.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in tree):
        time.sleep(0.2)
    left = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
    assert not left, f"processes left behind: {left}"


def _jobs(pids: set[int]) -> list[int]:
    names = {}
    for pid in pids:
        try:
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
    return [pid for pid, name in names.items() if name == JOB_NAME.decode()]
