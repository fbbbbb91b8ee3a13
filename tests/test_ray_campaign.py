"""Campaigns of two candidates a round on a real local Ray (no mock), through the `researcher` CLI:
real runner and sandbox, git, MLflow and Optuna. A Ray worker killed in the middle of a round is
one failed candidate and the campaign goes on; sampling-only fills join a round whose training
leaves a worker idle, each a candidate like the others; a kill -9 of the campaign leaves no process of its
Ray, and the resumed campaign has exactly one MLflow child run per candidate and the study's trials
told once each.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import git
import optuna
import psutil
import pytest
from fast_scaffold import campaign_root, with_budget
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.fill import FILL_NOTE
from harness.journal import Journal
from harness.training_noise import retrain_dir

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")

PROPOSALS = [
    {"hypothesis": "lower temperature", "edits": [{"knob": "sampling.temperature", "value": 0.3}]},
    {"hypothesis": "narrower nucleus", "edits": [{"knob": "sampling.top_p", "value": 0.8}]},
    {"hypothesis": "higher temperature", "edits": [{"knob": "sampling.temperature", "value": 1.3}]},
    {"hypothesis": "top-k sampling", "edits": [{"knob": "sampling.top_k", "value": 20}]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return campaign_root(tmp_path_factory.mktemp("ray-campaigns"), PROPOSALS)


def overrides(root, scaffold, **extra) -> list[str]:
    base = {"runs_dir": str(root / "runs"), "scaffold": str(scaffold), "baseline_seeds": "[0,1]",
            "eval_seeds": "[0]", "reeval_seeds": "[1]", "live": "false", "rounds": 2, "runner": "ray",
            "runner.workers": 2, "candidates_per_round": 2}
    return [f"{k}={v}" for k, v in (base | extra).items()]


def cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def evaluating(camp, n: int) -> bool:
    """Whether round n's two candidates are both in the runner (each wrote its job.json)."""
    return all((camp / "rounds" / f"{n:03d}" / f"cand-{k}" / "job.json").exists() for k in (1, 2))


def child_runs(root, name: str) -> list[tuple[int, int | None]]:
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                              f"tags.campaign = '{name}'")
    return sorted((int(r.data.tags["round"]), int(r.data.tags.get("candidate", 0))) for r in runs
                  if "round" in r.data.tags)


def test_two_candidates_a_round_on_ray_and_a_killed_worker_is_one_failed_candidate(setup):
    root, scaffold, script = setup
    camp = root / "runs" / "ray2"
    killed = []

    def kill_a_worker_in_round_1():
        deadline = time.monotonic() + 600
        results = [camp / "rounds" / "001" / f"cand-{k}" / "result.json" for k in (1, 2)]
        while time.monotonic() < deadline and not killed and not all(r.exists() for r in results):
            if evaluating(camp, 1):
                # Ray titles an actor's process by the method it runs: a candidate that reuses round
                # 0's training can be done before the other has begun, and its actor is idle then.
                busy = [p for p in psutil.Process().children(recursive=True)
                        if cmdline(p).startswith("ray::Evaluator.evaluate")]
                if busy:
                    busy[0].kill()
                    killed.append(busy[0].pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_in_round_1)
    killer.start()
    args = overrides(root, scaffold, name="ray2", researcher="scripted", **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    killer.join()
    assert killed, "no Ray worker was found evaluating round 1"
    journal = Journal(camp)
    assert [h["round"] for h in journal.get("history")] == [0, 1, 2]
    first = journal.step_output(1, "evaluate")["candidates"]
    assert sorted(c["status"] for c in first) == ["failed", "ok"]
    failed = next(k for k, c in enumerate(first, 1) if c["status"] == "failed")
    reason = json.loads((camp / "rounds" / "001" / f"cand-{failed}" / "result.json").read_text())["reason"]
    assert reason.startswith("the Ray worker died")
    assert [c["status"] for c in journal.step_output(2, "evaluate")["candidates"]] == ["ok", "ok"]  # it went on
    # The random-weight policy scores 0 whatever the knobs: every candidate ties, none is kept.
    repo = git.Repo(camp / "scaffold")
    assert repo.heads["main"].commit.hexsha == repo.git.rev_list("--max-parents=0", "main")
    for n in (1, 2):
        chosen = journal.step_output(n, "compare")["chosen"]
        assert repo.heads[f"cand/{n:03d}"].commit == repo.heads[f"cand/{n:03d}-{chosen}"].commit
        assert {r.path for r in repo.refs} >= {f"refs/rejected/{n:03d}", f"refs/rejected/{n:03d}-{3 - chosen}"}
    assert child_runs(root, "ray2") == [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert not [p for p in psutil.Process().children(recursive=True) if "ray" in cmdline(p)]


def test_sampling_only_fills_join_a_round_whose_training_leaves_a_worker_idle(setup):
    """The random researcher (seed 2) draws a change to training and a decoder in rounds 1 and 2; at a
    budget where training takes several scorings, the plan adds one or two sampling-only fills,
    drawn apart from the round's own (which are those of the same campaign without fills), each
    evaluated, recorded and given its MLflow child run."""
    root, scaffold, _ = setup
    slow = with_budget(Path(shutil.copytree(scaffold, root / "fill_arith")), 512)
    for name, fill in (("fill2", "true"), ("plain2", "false")):
        assert main(["start", *overrides(root, slow, name=name, researcher="random", seed=2,
                                         **{"runner.fill": fill})]) == 0
    filled, plain = Journal(root / "runs" / "fill2"), Journal(root / "runs" / "plain2")
    counts = []
    for n in (1, 2):
        own, proposed = (j.step_output(n, "propose")["candidates"] for j in (plain, filled))
        fills = proposed[2:]
        assert len(own) == 2 and proposed[:2] == own and 1 <= len(fills) <= 2
        assert [p["edits"][0].get("knob", "").startswith("sampling.") for p in own] == [False, True]
        assert all(f["hypothesis"].endswith(FILL_NOTE) and len(f["edits"]) == 1
                   and f["edits"][0]["knob"].startswith("sampling.") for f in fills)
        assert [c["status"] for c in filled.step_output(n, "evaluate")["candidates"]] == ["ok"] * len(proposed)
        assert len(filled.step_output(n, "compare")["candidates"]) == len(proposed)
        summary = json.loads((root / "runs" / "fill2" / "rounds" / f"{n:03d}" / "candidates.json").read_text())
        assert [c["proposal"] for c in summary] == proposed
        counts.append(len(proposed))
    assert child_runs(root, "fill2") == [(0, 0)] + [(n, k) for n, c in zip((1, 2), counts) for k in range(1, c + 1)]
    assert child_runs(root, "plain2") == [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)]


def test_a_retrain_trains_the_candidate_and_the_incumbent_at_once_on_ray(setup):
    """A change to training that would be kept is re-trained with a fresh training seed, and so is
    the incumbent: two GRPO runs of one step, given to the two workers together (a margin of -0.5
    makes the random-weight policy's ties keeps)."""
    root, scaffold, _ = setup
    script = root / "retrain.jsonl"
    script.write_text(json.dumps({"hypothesis": "learn faster",
                                  "edits": [{"knob": "grpo.learning_rate", "value": 1e-5}]}) + "\n")
    args = overrides(root, scaffold, name="retrain2", rounds=1, candidates_per_round=1, margin=-0.5,
                     retrain_seeds="[1]", researcher="scripted", **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    camp = root / "runs" / "retrain2"
    journal = Journal(camp)
    assert journal.step_output(1, "decide")["decision"] == "keep"
    assert [p["train_seed"] for p in journal.step_output(1, "retrain")["per_seed"]] == [0, 1]
    runs = [retrain_dir(camp / "rounds" / n, 1) for n in ("001", "000")]
    for run in runs:
        assert not json.loads((run / "result.json").read_text())["training"]["cached"]  # really trained
    spans = [(os.stat(run / "job.json").st_mtime, os.stat(run / "result.json").st_mtime) for run in runs]
    (began_1, ended_1), (began_2, ended_2) = spans
    assert began_1 < ended_2 and began_2 < ended_1, "the two re-trainings ran one after the other"
    assert not (camp / "snapshots" / "001-0-retrain").exists()


def test_a_keep_is_scored_on_heldout_beside_the_next_round_on_ray(setup):
    """With two workers a keep's held-out runs (the new incumbent, and with the fresh training seed
    it was decided on, the new and the replaced one) go with the next round's evaluation, and its
    history entry and MLflow run get the score then (a margin of -0.5 makes ties keeps)."""
    root, scaffold, _ = setup
    script = root / "beside.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in (
        {"hypothesis": "learn faster", "edits": [{"knob": "grpo.learning_rate", "value": 1e-5}]}, PROPOSALS[3])))
    args = overrides(root, scaffold, name="beside2", candidates_per_round=1, margin=-0.5, retrain_seeds="[1]",
                     researcher="scripted", **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    camp = root / "runs" / "beside2"
    journal = Journal(camp)
    assert [h["decision"] for h in journal.get("history")] == ["baseline", "keep", "keep"]
    began = os.stat(camp / "rounds" / "002" / "proposal.json").st_mtime
    evaluate = json.loads((camp / "journal.json").read_text())["rounds"]["2"]["steps"]["evaluate"]
    evaluated = datetime.fromisoformat(evaluate["done_at"]).timestamp()  # to the second
    held = [camp / "rounds" / "001" / "heldout" / where for where in ("", "train-seed-1", "before/train-seed-1")]
    for folder in held:
        assert began <= os.stat(folder / "job.json").st_mtime <= os.stat(folder / "result.json").st_mtime < evaluated + 1
    entry = journal.get("history")[1]
    assert entry["heldout_accuracy"] == journal.step_output(1, "heldout")["heldout_accuracy"] is not None
    assert entry["heldout_by_train_seed"].keys() == {"0", "1"}
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    run = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                             "tags.campaign = 'beside2' AND tags.round = '1'")[0]
    assert run.data.metrics["heldout/accuracy"] == pytest.approx(entry["heldout_accuracy"])
    assert run.data.tags["false_keep"] == str(entry["false_keep"]).lower()
    assert journal.step_output(2, "heldout")["heldout_accuracy"] is not None  # the last round's, in place
    assert not (camp / "snapshots").exists() or not list((camp / "snapshots").iterdir())


@pytest.mark.slow
def test_kill_9_of_a_tpe_campaign_on_ray_and_resume(setup):
    root, scaffold, _ = setup
    camp = root / "runs" / "tpe2"
    args = overrides(root, scaffold, name="tpe2", researcher="tpe", seed=3)
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "harness.cli", "start", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and child.poll() is None and not evaluating(camp, 1):
        time.sleep(0.1)
    assert evaluating(camp, 1), "round 1 did not reach its evaluation in time"
    running = psutil.Process(child.pid).children(recursive=True)
    assert any("raylet" in cmdline(p) for p in running) and any("rl_pipeline.worker" in cmdline(p) for p in running)
    os.kill(child.pid, signal.SIGKILL)  # the campaign process alone: its Ray must go with it
    assert child.wait() == -signal.SIGKILL
    _, alive = psutil.wait_procs(running, timeout=60)
    assert not alive, f"left running after the kill: {[cmdline(p)[:80] for p in alive]}"
    assert Journal(camp).current_round() == 1 and not Journal(camp).is_done(1, "evaluate")
    storage = f"sqlite:///{camp / 'researcher' / 'optuna.db'}"
    asked = [t.number for t in optuna.load_study(study_name="campaign", storage=storage).trials
             if t.state == optuna.trial.TrialState.RUNNING]
    assert len(asked) == 2

    resumed = subprocess.run([sys.executable, "-m", "harness.cli", "resume", "tpe2", f"runs_dir={root / 'runs'}"],
                             env=env, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [h["round"] for h in Journal(camp).get("history")] == [0, 1, 2]
    assert child_runs(root, "tpe2") == [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)]  # one run per candidate
    trials = optuna.load_study(study_name="campaign", storage=storage).trials
    proposed = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
    assert [t.number for t in proposed if t.user_attrs["round"] == 1] == asked  # the same trials, resumed
    assert sorted(t.user_attrs["round"] for t in proposed) == [1, 1, 2, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in proposed)
