"""MLflow tracking against a real sqlite store: parent and child runs, idempotent rounds, resume.

Creating a sqlite store runs MLflow's migrations (seconds), so one blank store is made per session
and each test works on its own copy of the file.
"""

import inspect
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from harness.report import progress_plot
from harness.tracking import (MAX_PARAM_VALUE, MAX_TAG_VALUE, MlflowTracker, NullTracker, default_tracking_uri,
                              diff_markdown, make_tracker, round_description, sanitize_key)

CONFIG = {"name": "demo", "rounds": 3, "researcher": {"name": "scripted", "file": "p.jsonl"},
          "compare": {"margin": 0.0, "seeds": [0, 1, 2]}, "notes": "x" * 10_000, "odd:key(1)": True}


@pytest.fixture(scope="session")
def blank_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlflow") / "blank.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


@pytest.fixture
def uri(blank_store, tmp_path) -> str:
    shutil.copy(blank_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def result(accuracy, temperature, status="ok"):
    if status != "ok":
        return {"status": "failed", "reason": "training diverged", "seeds": [0, 1]}
    return {"status": "ok", "knobs": {"sampling.temperature": temperature, "train.lr": 1e-5},
            "metrics": {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.05, accuracy + 0.05],
                        "format_valid_rate": 0.9, "mean_completion_tokens": 12.5, "truncation_rate": 0.0,
                        "repetition_rate": 0.1, "accuracy_by_seed": {"0": accuracy - 0.01, "1": accuracy + 0.01}},
            "heldout": {"metrics": {"accuracy": accuracy - 0.02}}, "timings": {"eval_s": 3.0}}


ROUNDS = {  # round: (accuracy, temperature, status, decision)
    1: (0.40, 0.7, "ok", "keep"),
    2: (0.35, 0.5, "ok", "revert"),
    3: (None, 0.9, "failed", "revert"),
}


def log_diff(temperature) -> str:
    return f"--- a/knobs.yaml\n+++ b/knobs.yaml\n-temperature: 1.0\n+temperature: {temperature}\n"


def log_round(tracker, n, critique=None, temperature=None):
    accuracy, temp, status, decision = ROUNDS[n]
    temp = temperature if temperature is not None else temp
    res = result(accuracy, temp, status)
    verdict = {"decision": decision, "delta": None if accuracy is None else accuracy - 0.3,
               "ci95": None if accuracy is None else [0.01, 0.09], "reason": f"{decision}: round {n}",
               "metric_deltas": {} if accuracy is None else {"format_valid_rate": 0.02}}
    return tracker.log_round(
        n, proposal={"hypothesis": f"hypothesis {n}", "edits": [{"knob": "sampling.temperature", "value": temp}]},
        result=res, verdict=verdict, critique=critique or f"critique of round {n}",
        diff=log_diff(temp),
        commits={"candidate": f"c{n}" * 20, "incumbent": "i" * 40}, memory_snapshot=f"# memory after round {n}",
        approval={"decision": "approve", "who": "alice", "when": "2026-01-01T00:00:00", "note": "ok",
                  "point": "keep", "round": 1} if n == 1 else None,
        heldout={"heldout_accuracy": 0.38, "heldout_delta": -0.01, "heldout_paired": True,
                 "false_keep": True} if decision == "keep" else None,
        extra_metrics={"round_seconds": 60.0})


def children(client, tracker):
    exp = client.get_experiment_by_name(tracker.experiment).experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{tracker.run_id}'")
    return {int(r.data.tags["round"]): r for r in runs}


def artifact(run_id, name, uri) -> str:
    return Path(download_artifacts(run_id=run_id, artifact_path=name, tracking_uri=uri)).read_text()


@pytest.fixture
def campaign(uri):
    tracker = MlflowTracker(uri, strict=True)
    tracker.start_campaign("demo", CONFIG)
    for n in ROUNDS:
        log_round(tracker, n)
    return tracker


def test_a_campaign_is_one_parent_with_a_child_per_round(campaign, uri, tmp_path):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("agentic-researcher")
    assert Path(exp.artifact_location.removeprefix("file://")) == tmp_path / "mlartifacts"
    parents = client.search_runs([exp.experiment_id], "tags.role = 'campaign'")
    assert [p.info.run_id for p in parents] == [campaign.run_id]

    params = parents[0].data.params
    assert params["researcher.name"] == "scripted" and params["compare.seeds"] == "[0, 1, 2]"
    assert params["notes"] == "x" * MAX_PARAM_VALUE and params[sanitize_key("odd:key(1)")] == "true"
    assert json.loads(artifact(campaign.run_id, "config.json", uri)) == CONFIG

    runs = children(client, campaign)
    assert sorted(runs) == [1, 2, 3]
    kept, failed = runs[1].data, runs[3].data
    assert kept.params == {"sampling.temperature": "0.7", "train.lr": "1e-05"}
    assert kept.metrics["accuracy"] == 0.40 and kept.metrics["accuracy_ci95_lo"] == pytest.approx(0.35)
    assert kept.metrics["accuracy_by_seed/1"] == pytest.approx(0.41)
    assert kept.metrics["heldout/accuracy"] == pytest.approx(0.38) and kept.metrics["heldout/delta"] == -0.01
    assert kept.tags["false_keep"] == "true" and "false_keep" not in runs[2].data.tags
    assert kept.metrics["delta"] == pytest.approx(0.10) and kept.metrics["delta_ci95_hi"] == 0.09
    assert kept.metrics["delta/format_valid_rate"] == 0.02 and kept.metrics["round_seconds"] == 60.0
    assert kept.tags["decision"] == "keep" and kept.tags["status"] == "ok"
    assert kept.tags["commit.candidate"] == "c1" * 20 and kept.tags["commit.incumbent"] == "i" * 40
    assert kept.tags["approval.who"] == "alice" and kept.tags["hypothesis"] == "hypothesis 1"
    assert "keep: round 1\n\n**Approval:** approve of the keep by alice: ok\n\n**Diff**" in kept.tags["mlflow.note.content"]
    assert failed.tags["status"] == "failed" and failed.tags["failure_reason"] == "training diverged"
    assert failed.params == {"sampling.temperature": "0.9"} and "accuracy" not in failed.metrics
    assert "approval.who" not in runs[2].data.tags

    rid = runs[2].info.run_id
    assert artifact(rid, "critique.md", uri) == "critique of round 2"
    assert artifact(rid, "diff.patch", uri).endswith("+temperature: 0.5\n")
    assert artifact(rid, "diff.md", uri) == "```diff\n" + log_diff(0.5) + "```\n"  # the UI previews .md
    assert runs[2].data.tags["mlflow.note.content"] == ("hypothesis 2\n\nrevert: round 2\n\n**Diff**\n\n"
                                                        "```diff\n" + log_diff(0.5) + "```\n")
    assert artifact(rid, "memory.md", uri) == "# memory after round 2"
    assert json.loads(artifact(rid, "proposal.json", uri))["hypothesis"] == "hypothesis 2"
    assert json.loads(artifact(rid, "verdict.json", uri))["decision"] == "revert"


def test_progress_metrics_and_plot_land_on_the_parent(campaign, uri, tmp_path):
    history = [{"round": 0, "decision": "baseline", "accuracy": 0.3, "incumbent_accuracy": 0.3,
                "heldout_accuracy": 0.28, "hypothesis": "", "delta": None}]
    history += [{"round": n, "decision": "failed" if s != "ok" else d, "accuracy": a,
                 "incumbent_accuracy": 0.4 if n else 0.3, "heldout_accuracy": 0.38 if d == "keep" else None,
                 "heldout_delta": 0.1 if d == "keep" else None, "false_keep": False if d == "keep" else None,
                 "hypothesis": f"hypothesis {n}", "delta": None} for n, (a, _, s, d) in ROUNDS.items()]
    history[1] |= {"heldout_delta": -0.01, "false_keep": True}  # kept on eval, worse on held-out
    plot = progress_plot(history, tmp_path / "progress.png")
    campaign.log_campaign_progress(history[:2], plot)
    campaign.log_campaign_progress(history, plot)  # rounds 0 and 1 again: not logged twice
    campaign.end_campaign("finished")

    client = MlflowClient(uri)
    incumbent = client.get_metric_history(campaign.run_id, "incumbent_accuracy")
    assert [(m.step, m.value) for m in incumbent] == [(0, 0.3), (1, 0.4), (2, 0.4), (3, 0.4)]
    assert [m.step for m in client.get_metric_history(campaign.run_id, "candidate_accuracy")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(campaign.run_id, "heldout_accuracy")] == [0, 1]
    assert [(m.step, m.value) for m in client.get_metric_history(campaign.run_id, "heldout_delta")] == [(1, -0.01)]
    false_keeps = client.get_metric_history(campaign.run_id, "false_keeps")  # so far, at each round
    assert [(m.step, m.value) for m in false_keeps] == [(0, 0), (1, 1), (2, 1), (3, 1)]
    assert [f.path for f in client.list_artifacts(campaign.run_id)] == ["config.json", "progress.png"]
    assert client.get_run(campaign.run_id).info.status == "FINISHED"


def test_logging_a_round_again_updates_it(campaign, uri):
    client = MlflowClient(uri)
    before = children(client, campaign)
    assert log_round(campaign, 2, critique="second thoughts") == before[2].info.run_id
    after = children(client, campaign)
    assert sorted(after) == [1, 2, 3] and after[2].info.run_id == before[2].info.run_id
    assert artifact(after[2].info.run_id, "critique.md", uri) == "second thoughts"

    # Params are immutable in MLflow: a round re-run with other knobs replaces its run.
    replaced = log_round(campaign, 2, temperature=0.6)
    after = children(client, campaign)
    assert sorted(after) == [1, 2, 3] and after[2].info.run_id == replaced != before[2].info.run_id
    assert after[2].data.params["sampling.temperature"] == "0.6"


def test_resume_reuses_the_parent_run(campaign, uri):
    campaign.end_campaign("killed")
    resumed = MlflowTracker(uri, strict=True)
    assert resumed.start_campaign("demo", CONFIG | {"rounds": 5}) == campaign.run_id
    client = MlflowClient(uri)
    assert client.get_run(campaign.run_id).info.status == "RUNNING"
    assert client.get_run(campaign.run_id).data.params["rounds"] == "3"  # params keep their first values
    assert json.loads(artifact(campaign.run_id, "config.json", uri))["rounds"] == 5
    log_round(resumed, 3)
    assert sorted(children(client, resumed)) == [1, 2, 3]

    by_id = MlflowTracker(uri, strict=True)
    assert by_id.start_campaign("renamed", CONFIG, run_id=campaign.run_id) == campaign.run_id
    assert MlflowTracker(uri, strict=True).start_campaign("other", CONFIG) != campaign.run_id


def test_a_new_campaign_under_a_deleted_ones_name_gets_its_own_run(uri):
    first = MlflowTracker(uri, strict=True)
    old = first.start_campaign("demo", CONFIG, campaign_id="a" * 32)
    log_round(first, 1)
    new = MlflowTracker(uri, strict=True).start_campaign("demo", CONFIG, campaign_id="b" * 32)
    assert new != old  # the old folder was deleted and the name reused: its rounds stay on its own run
    assert MlflowTracker(uri, strict=True).start_campaign("demo", CONFIG, campaign_id="b" * 32) == new
    client = MlflowClient(uri)
    assert client.get_run(new).data.tags["campaign_id"] == "b" * 32

    # A run made before campaign ids, reopened by its stored id, is tagged with the campaign's id.
    legacy = MlflowTracker(uri, strict=True).start_campaign("legacy", CONFIG)
    assert MlflowTracker(uri, strict=True).start_campaign("legacy", CONFIG, legacy, "c" * 32) == legacy
    assert MlflowTracker(uri, strict=True).start_campaign("legacy", CONFIG, campaign_id="c" * 32) == legacy


def test_a_broken_store_warns_and_never_raises(tmp_path, caplog):
    (tmp_path / "not-a-dir").write_text("")
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/not-a-dir/mlflow.db")
    with caplog.at_level(logging.WARNING, logger="harness.tracking"):
        assert tracker.start_campaign("demo", CONFIG) is None
        assert log_round(tracker, 1) is None
        tracker.log_campaign_progress([], None)
        tracker.end_campaign("failed")
    assert len(caplog.records) == 4 and "the campaign goes on" in caplog.records[0].getMessage()


def public_methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_null_tracker_has_the_same_methods():
    assert public_methods(NullTracker) == public_methods(MlflowTracker)
    assert set(public_methods(NullTracker)) == {"start_campaign", "log_round", "log_campaign_progress",
                                                 "end_campaign", "log_heldout"}
    null = make_tracker(False)
    assert isinstance(null, NullTracker) and null.start_campaign("demo", CONFIG) is None


def test_the_tracking_uri_defaults_to_sqlite_under_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path / "runs") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert make_tracker(True, runs_dir=tmp_path / "runs").tracking_uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert make_tracker(True, runs_dir=tmp_path / "runs").tracking_uri == "http://127.0.0.1:5000"
    assert make_tracker(True, "sqlite:///elsewhere.db").tracking_uri == "sqlite:///elsewhere.db"


@pytest.mark.parametrize("key, clean", [("a:b", "a_b"), ("a//b", "a/b"), ("/a/./b/../c", "a/_/b/_/c"),
                                         ("ok.key-1 x", "ok.key-1 x"), ("", "_")])
def test_sanitize_key(key, clean):
    assert sanitize_key(key) == clean


def test_a_diff_too_long_for_the_description_is_cut_at_a_line():
    diff = "".join(f"+line {i} ```` with a fence in it\n" for i in range(2000))
    text = round_description({"hypothesis": "h"}, {"reason": "keep: +0.1"}, diff)
    assert len(text) <= MAX_TAG_VALUE and text.startswith("h\n\nkeep: +0.1\n\n**Diff**\n\n`````diff\n+line 0 ")
    shown = text.split("`````diff\n")[1].split("\n`````\n")[0].split("\n")
    assert shown == diff.splitlines()[:len(shown)] and len(shown) > 100
    assert text.endswith(f"_{2000 - len(shown)} more lines in `diff.md` and `diff.patch`._\n")
    assert diff_markdown("a ``` b\n") == "````diff\na ``` b\n````\n"  # no line closes the fence


REAL_PROPOSALS = [
    {"hypothesis": "lower temperature", "edits": [{"knob": "sampling.temperature", "value": 0.3}]},
    {"hypothesis": "a comment in the prompt", "edits": [{"file": "prompt.py", "search": 'f"Q: {question}\\nA: "',
                                                         "replace": 'f"Q: {question}\\nA: "  # same prompt'}]},
]


@pytest.mark.slow
def test_a_real_campaign_logs_the_real_git_diff_where_the_ui_shows_it(tmp_path):
    """Each round's run holds `git diff` of its candidate commit in the campaign's scaffold repo:
    as diff.patch (which `git apply` takes), as diff.md (which MLflow's viewer renders) and in the
    run's description."""
    from fast_scaffold import TEST_PRESET, fast_scaffold

    from harness.cli import main
    from model import build_policy, build_tokenizer, save_policy

    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, tmp_path / "runs" / "models" / "base")
    script = tmp_path / "proposals.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in REAL_PROPOSALS))
    args = {"name": "diffs", "rounds": 2, "researcher": "scripted", "researcher.file": str(script),
            "runs_dir": str(tmp_path / "runs"), "scaffold": str(fast_scaffold(tmp_path / "fast_arith")),
            "baseline_seeds": "[0,1]", "eval_seeds": "[0]", "reeval_seeds": "[1]", "live": "false"}
    assert main(["start", *(f"{k}={v}" for k, v in args.items())]) == 0

    repo = tmp_path / "runs" / "diffs" / "scaffold"
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("agentic-researcher").experiment_id
    runs = {int(r.data.tags["round"]): r for r in client.search_runs([experiment], "tags.campaign = 'diffs'")
            if "round" in r.data.tags}
    for n, changed in ((1, "temperature: 0.3"), (2, 'return f"Q: {question}\\nA: "  # same prompt')):
        run = runs[n]
        commit = run.data.tags["commit.candidate"]
        git_diff = subprocess.run(["git", "-C", str(repo), "diff", f"{commit}^", commit], capture_output=True,
                                  text=True, check=True).stdout
        assert any(line.startswith("+") and changed in line for line in git_diff.splitlines()), git_diff
        rid = run.info.run_id
        patch = artifact(rid, "diff.patch", uri)
        assert patch == git_diff
        assert artifact(rid, "diff.md", uri) == "```diff\n" + git_diff + "```\n"
        assert "**Diff**\n\n```diff\n" + git_diff + "```\n" in run.data.tags["mlflow.note.content"]
        assert run.data.tags["mlflow.note.content"].startswith(REAL_PROPOSALS[n - 1]["hypothesis"])
        # the patch applies to the commit the candidate was made from
        clone = tmp_path / f"clone-{n}"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", f"{commit}^"], check=True)
        (tmp_path / f"{n}.patch").write_text(patch)
        subprocess.run(["git", "-C", str(clone), "apply", "--check", str(tmp_path / f"{n}.patch")], check=True)


STARTER = """
import sys, time
from pathlib import Path
from harness.tracking import make_tracker
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
tracker = make_tracker(enabled=True, runs_dir=sys.argv[1])
print(tracker.start_campaign(f"campaign-{sys.argv[3]}", {"n": sys.argv[3]}))
"""


def test_campaigns_that_start_together_on_a_fresh_store_all_get_their_run(tmp_path):
    """The first touches of a new sqlite store migrate its tables: done at once by several processes,
    they raced (seen: 'table _alembic_tmp_params already exists'), and the losers went untracked."""
    go = tmp_path / "go"
    starters = [subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "runs"), str(go), str(i)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    time.sleep(8)  # each has imported the tracker and waits for the signal
    go.touch()
    outputs = [p.communicate(timeout=300) for p in starters]
    assert [p.returncode for p in starters] == [0, 0, 0]
    run_ids = [out.strip() for out, _ in outputs]
    assert all(len(r) == 32 for r in run_ids), [err[-2000:] for _, err in outputs]
    client = MlflowClient(default_tracking_uri(tmp_path / "runs"))
    assert {client.get_run(r).data.tags["campaign"] for r in run_ids} == {"campaign-0", "campaign-1", "campaign-2"}
