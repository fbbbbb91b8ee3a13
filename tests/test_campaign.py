"""Campaigns end to end through the `researcher` CLI: real runner, real git, real MLflow store.

A random-weight micro base and a scaffold copy cut to a couple of GRPO steps keep each round to
seconds; what is under test is the loop (rejections, decisions, git, memory, tracking, resume),
not the policy's skill.
"""

import json
import os
import signal
import subprocess
import sys
import time

import git
import pytest
from bench_script import bench_script
from fast_scaffold import COMPLETIONS, campaign_root
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.journal import STEPS, Journal
from harness.training_noise import retrain_dir, training_seed_verdict
from rl_pipeline.result import read_result


PROPOSALS = [
    {"hypothesis": "lower temperature sharpens answers", "edits": [{"knob": "sampling.temperature", "value": 0.3}]},
    {"hypothesis": "escape the scaffold", "edits": [{"file": "../rl_pipeline/evaluate.py", "search": "a", "replace": "b"}]},
    {"hypothesis": "out of range", "edits": [{"knob": "sampling.top_p", "value": 7}]},
    {"hypothesis": "missing text", "edits": [{"file": "reward.py", "search": "no such text", "replace": "x"}]},
    {"hypothesis": "shorter answers", "edits": [{"file": "prompt.py", "search": 'f"Q: {question}\\nA: "',
                                                  "replace": 'f"Q: {question}\\nA: "  # same prompt'}]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return campaign_root(tmp_path_factory.mktemp("campaigns"), PROPOSALS)


def overrides(root, scaffold, **extra):
    base = {"runs_dir": str(root / "runs"), "scaffold": str(scaffold), "baseline_seeds": "[0,1]",
            "eval_seeds": "[0]", "reeval_seeds": "[1]", "live": "false"}
    return [f"{k}={v}" for k, v in (base | extra).items()]


def test_scripted_campaign(setup, capsys):
    root, scaffold, script = setup
    args = overrides(root, scaffold, name="scripted", rounds=5, researcher="scripted",
                     **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    camp = root / "runs" / "scripted"
    history = json.loads((camp / "journal.json").read_text())["state"]["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3, 4, 5]
    decisions = {h["round"]: h["decision"] for h in history}
    assert decisions[2] == decisions[3] == decisions[4] == "failed"
    reasons = {n: json.loads((camp / "rounds" / f"{n:03d}" / "verdict.json").read_text())["reason"]
               for n in (2, 3, 4)}
    assert "rl_pipeline" in reasons[2]
    assert "above the maximum" in reasons[3]
    assert "not found" in reasons[4]
    rounds = json.loads((camp / "journal.json").read_text())["rounds"]
    evaluated = {"analyze", "propose", "gate_proposal", "apply", "evaluate", "compare", "critique", "decide",
                 "learn", "record"}  # no re-evaluation, keep gate or held-out: nothing came close to a keep
    assert {n: set(rounds[str(n)]["steps"]) for n in range(1, 6)} == {
        1: evaluated, 5: evaluated, **dict.fromkeys((2, 3, 4), evaluated - {"evaluate", "compare", "critique"})}
    # The random-weight policy scores 0 whatever the knobs: both evaluated candidates tie the
    # incumbent exactly, and a tie is not above the margin.
    for n in (1, 5):
        verdict = json.loads((camp / "rounds" / f"{n:03d}" / "verdict.json").read_text())
        assert decisions[n] == verdict["decision"] == "revert"
        assert verdict["delta"] == 0.0 and "the estimate is not above the margin" in verdict["reason"]
    # git: main moved only for keeps; every evaluated candidate is kept or under refs/rejected/.
    repo = git.Repo(camp / "scaffold")
    assert not repo.is_dirty(untracked_files=True)
    assert repo.heads["main"].commit.hexsha == repo.git.rev_list("--max-parents=0", "main")  # nothing kept
    for n in (1, 5):
        kept = decisions[n] == "keep"
        assert (f"refs/rejected/{n:03d}" in [r.path for r in repo.refs]) != kept
        assert repo.git.notes("--ref", "rejected", "show", f"refs/rejected/{n:03d}").startswith("revert: accuracy")
    memory = (camp / "memory.md").read_text()
    assert "Round 5" in memory and "Lessons" in memory
    assert (camp / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                              "tags.campaign = 'scripted'")
    assert len([r for r in runs if "round" in r.data.tags]) == 6  # baseline + 5 rounds
    capsys.readouterr()
    assert main(["status", "scripted", f"runs_dir={root / 'runs'}"]) == 0
    assert "5/5" in capsys.readouterr().out
    assert main(["diff", "scripted", "1", f"runs_dir={root / 'runs'}"]) == 0
    assert "temperature: 0.3" in capsys.readouterr().out
    assert main(["start", *args]) == 2  # the name is taken
    assert "already exists" in capsys.readouterr().err
    assert main(["compare", "scripted", f"runs_dir={root / 'runs'}"]) == 2
    assert "at least two campaigns" in capsys.readouterr().err
    assert main(["compare", "scripted", "nope", f"runs_dir={root / 'runs'}"]) == 2
    assert "no campaign 'nope'" in capsys.readouterr().err


def test_a_scripted_move_is_committed_with_its_diff_and_named_in_memory_and_mlflow(setup):
    root, scaffold, _ = setup
    script = root / "move.jsonl"
    script.write_text(json.dumps({"hypothesis": "apply move reward_malformed_penalty: rank format failures last",
                                  "edits": [{"move": "reward_malformed_penalty"}]}) + "\n")
    args = overrides(root, scaffold, name="move", rounds=1, researcher="scripted", **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    camp = root / "runs" / "move"
    verdict = json.loads((camp / "rounds" / "001" / "verdict.json").read_text())
    assert verdict["decision"] in ("keep", "revert") and verdict["delta"] is not None  # it ran
    repo = git.Repo(camp / "scaffold")
    candidate = repo.commit("cand/001")
    assert candidate.message.startswith("apply move reward_malformed_penalty")
    diff = (camp / "rounds" / "001" / "diff.patch").read_text()
    assert diff == repo.git.diff(candidate.parents[0].hexsha, candidate.hexsha, "--no-color", "--no-ext-diff")
    assert [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        "-    return out",
        "+    return [r - 0.5 * (not s.format_ok) for r, s in zip(out, scores)]  # the scorer could not read an integer"]
    memory = (camp / "memory.md").read_text()
    assert "move reward_malformed_penalty" in memory
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                              "tags.campaign = 'move' and tags.round = '1'")
    assert runs[0].data.tags["moves"] == "reward_malformed_penalty"


def test_keeps_are_scored_on_heldout_and_false_keeps_counted(setup, capsys):
    """A margin below zero keeps a tie: both keeps change nothing on held-out, so both are false
    keeps (the first paired against the baseline's held-out, the second against the first keep's),
    and the summary, the printed line and MLflow say so."""
    root, scaffold, _ = setup
    script = root / "ties.jsonl"
    script.write_text("".join(json.dumps({"hypothesis": h, "edits": [{"knob": k, "value": v}]}) + "\n" for h, k, v in (
        ("cooler", "sampling.temperature", 0.3), ("narrower", "sampling.top_p", 0.5))))
    args = overrides(root, scaffold, name="ties", rounds=2, researcher="scripted", margin=-0.01,
                     **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    assert "2 kept (2 false: held-out change not positive)" in " ".join(capsys.readouterr().out.split())
    camp = root / "runs" / "ties"
    history = Journal(camp).get("history")
    assert [(h["decision"], h["heldout_delta"], h["false_keep"]) for h in history[1:]] == [("keep", 0.0, True)] * 2
    assert Journal(camp).step_output(2, "heldout")["heldout_paired"]
    for n in (1, 2):  # the baseline's result holds held-out scores; the evidence the researcher sees does not
        assert "heldout" not in json.dumps(Journal(camp).step_output(n, "analyze"))
    summary = (camp / "summary.md").read_text()
    assert "- false keeps (held-out change not positive): 2 of 2 kept rounds scored on held-out (rounds 1, 2)" in summary
    assert "| 2 | narrower | +0.0000 | 0.0000 | 0.0000 | +0.0000 (false keep) |" in summary
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                              "tags.campaign = 'ties'")
    parent = next(r for r in runs if r.data.tags.get("role") == "campaign")
    assert [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "false_keeps")] == [
        (0, 0), (1, 1), (2, 2)]
    rounds = {int(r.data.tags["round"]): r.data for r in runs if "round" in r.data.tags}
    assert rounds[1].tags["false_keep"] == rounds[2].tags["false_keep"] == "true"
    assert rounds[2].metrics["heldout/delta"] == 0.0 and "false_keep" not in rounds[0].tags


@pytest.mark.slow
def test_kill_and_resume(setup):
    root, scaffold, _ = setup
    args = overrides(root, scaffold, name="killed", rounds=4, researcher="random", seed=3)
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "start", *args]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    camp = root / "runs" / "killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:  # kill -9 in the middle of round 2
        if (camp / "rounds" / "002").exists():
            break
        time.sleep(0.2)
    assert child.poll() is None, "the campaign ended before round 2 began"
    assert (camp / "rounds" / "002").exists(), "round 2 did not begin in time"
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    killed = Journal(camp)  # the kill landed mid-round: round 2 begun, not finished
    assert killed.last_finished_round() == 1 and killed.current_round() == 2
    done_before = {step: killed.step_output(2, step) for step in STEPS if killed.is_done(2, step)}
    time.sleep(2)  # the runner's child dies with the campaign process (PR_SET_PDEATHSIG)
    orphans = subprocess.run(["pgrep", "-f", str(camp / "rounds")], capture_output=True, text=True).stdout
    assert not orphans.strip(), f"runner children outlived the killed campaign: {orphans}"
    busy = subprocess.run([sys.executable, "-m", "harness.cli", "resume", "killed", f"runs_dir={root / 'runs'}"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert busy.returncode == 0, busy.stderr[-2000:]
    history = json.loads((camp / "journal.json").read_text())["state"]["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3, 4]
    resumed = Journal(camp)  # the steps round 2 had finished were kept, not run again
    assert {step: resumed.step_output(2, step) for step in done_before} == done_before
    assert all(resumed.round_done(n) for n in range(1, 5))
    repo = git.Repo(camp / "scaffold")
    assert not repo.is_dirty(untracked_files=True)
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                              "tags.campaign = 'killed'")
    rounds = sorted(int(r.data.tags["round"]) for r in runs if "round" in r.data.tags)
    assert rounds == [0, 1, 2, 3, 4]


def test_a_change_to_training_is_retrained_on_a_fresh_seed_before_it_is_kept(setup):
    """A margin of -0.5 makes every tie a keep (the random-weight policy scores 0 however it is
    trained), so each change gets as far as a keep: a change to training is re-trained with a fresh
    training seed, the incumbent too, and the step's verdict is the round's; a sampling change is
    not re-trained; and the next change to training finds the incumbent's re-training cached."""
    root, scaffold, _ = setup
    script = root / "retrain.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in [
        {"hypothesis": "learn faster", "edits": [{"knob": "grpo.learning_rate", "value": 1e-5}]},
        {"hypothesis": "sample cooler", "edits": [{"knob": "sampling.temperature", "value": 0.5}]},
        {"hypothesis": "clip wider", "edits": [{"knob": "grpo.epsilon", "value": 0.3}]},
        {"hypothesis": "learn faster still", "edits": [{"knob": "grpo.learning_rate", "value": 2e-5}]}]))
    args = overrides(root, scaffold, name="retrain", rounds=4, researcher="scripted", margin=-0.5,
                     retrain_seeds="[1]", **{"researcher.file": str(script)})
    assert main(["start", *args]) == 0
    camp = root / "runs" / "retrain"
    journal = Journal(camp)
    assert [journal.step_output(n, "decide")["decision"] for n in (1, 2, 3, 4)] == ["keep"] * 4
    assert [journal.is_done(n, "retrain") for n in (1, 2, 3, 4)] == [True, False, True, True]

    retrained = journal.step_output(1, "retrain")
    assert [(p["train_seed"], p["delta"]) for p in retrained["per_seed"]] == [(0, 0.0), (1, 0.0)]
    assert retrained["verdict"]["decision"] == "keep" and retrained["left_out"] == []
    assert "by training seed: 0 +0.000, 1 +0.000" in retrained["verdict"]["reason"]
    rounds = camp / "rounds"
    candidate, incumbent = read_result(retrain_dir(rounds / "001", 1)), read_result(retrain_dir(rounds / "000", 1))
    for fresh, first in ((candidate, read_result(rounds / "001")), (incumbent, read_result(rounds / "000"))):
        assert fresh["training"]["train_seed"] == 1 and not fresh["training"]["cached"]  # really trained
        assert fresh["training"]["key"] != first["training"]["key"] and fresh["training"]["completions"] == COMPLETIONS
    # Round 3's incumbent is round 2, round 1's training with cooler sampling: its re-training is cached.
    reused = read_result(retrain_dir(rounds / "002", 1))["training"]
    assert reused["cached"] and reused["key"] == candidate["training"]["key"]
    # The step's verdict, from the result files alone, is the round's: verdict, critique, memory, MLflow.
    again = training_seed_verdict({0: (rounds / "001", rounds / "000"),
                                   1: (retrain_dir(rounds / "001", 1), retrain_dir(rounds / "000", 1))}, margin=-0.5)
    assert json.loads(json.dumps(again)) == retrained
    assert json.loads((rounds / "001" / "verdict.json").read_text()) == retrained["verdict"]
    critique = (rounds / "001" / "critique.md").read_text()
    assert "**Across training seeds?** Re-trained with fresh training seeds" in critique
    assert "seed 0 +0.000, seed 1 +0.000" in (camp / "memory.md").read_text()
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    run = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                             "tags.campaign = 'retrain' and tags.round = '1'")[0]
    assert run.data.metrics["delta_by_train_seed/1"] == 0.0 and "training seed" in run.data.tags["reason"]

    # Held-out, for the record: a keep decided over training seeds has its change averaged over them,
    # the new incumbent and the one it replaced each scored with training seed 1 as well.
    held = {n: journal.step_output(n, "heldout") for n in (1, 2, 3, 4)}
    assert [held[n].get("heldout_by_train_seed") for n in (1, 2, 3, 4)] == [{"0": 0.0, "1": 0.0}, None,
                                                                           {"0": 0.0, "1": 0.0}, {"0": 0.0, "1": 0.0}]
    commits = {n: journal.step_output(n, "decide")["commits"] for n in (1, 2, 3, 4)}
    for n, before in ((1, rounds / "001" / "heldout" / "before"), (3, rounds / "003" / "heldout" / "before"),
                      (4, rounds / "003" / "heldout")):
        new, old = read_result(rounds / f"{n:03d}" / "heldout" / "train-seed-1"), read_result(before / "train-seed-1")
        assert new["scaffold"]["commit"] == commits[n]["candidate"] and "heldout" in new
        assert old["scaffold"]["commit"] == commits[n]["incumbent_before"] and "heldout" in old
        assert new["training"]["train_seed"] == old["training"]["train_seed"] == 1
        assert new["training"]["cached"] and old["training"]["cached"]  # trained by the re-training, scored only
        incumbent = read_result(rounds / f"{n:03d}" / "heldout")
        assert not any("per_example" in r for r in (new, old, incumbent))  # held-out alone: eval's are on disk
    # Round 4 replaced round 3, a keep scored with seed 1 already: taken from there, not scored again.
    assert not (rounds / "004" / "heldout" / "before").exists()
    history = {h["round"]: h for h in journal.get("history")}
    assert history[3]["heldout_by_train_seed"] == {"0": 0.0, "1": 0.0} and history[3]["false_keep"]
    assert "| +0.0000 over 2 trainings (false keep) |" in (camp / "summary.md").read_text()
    assert run.data.metrics["heldout/delta_by_train_seed/1"] == 0.0
    # bench/heldout_keeps.py, which scores the keeps of campaigns from before this record, gives the same.
    bench = bench_script("heldout_keeps.py", str(camp))
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "retrain: 3 re-trained keep(s)" in bench.stdout
    for n in (1, 3, 4):
        assert f"{n:>5}  {0:>+17.4f}  {0:>+19.4f}  0 +0.0000, 1 +0.0000  false keep" in bench.stdout
    assert "3 on training seed 0 alone, 3 over the training seeds each keep was decided on" in bench.stdout
    assert (camp / "heldout-keeps").is_dir() and not git.Repo(camp / "scaffold").is_dirty(untracked_files=True)


def test_second_process_is_refused(setup, tmp_path):
    from harness.journal import CampaignLock

    root, _, _ = setup
    camp = root / "runs" / "locked"
    camp.mkdir(parents=True)
    with CampaignLock(camp):
        (camp / "config.yaml").write_text("name: locked\n")
        code = subprocess.run([sys.executable, "-m", "harness.cli", "resume", "locked", f"runs_dir={root / 'runs'}"],
                              capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        (camp / "config.yaml").write_text("name: locked\nrounds: 3\n")
        more = subprocess.run([sys.executable, "-m", "harness.cli", "resume", "locked", "rounds=9",
                               f"runs_dir={root / 'runs'}"], capture_output=True, text=True,
                              env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert code.returncode == 2 and str(os.getpid()) in code.stderr
    assert more.returncode == 2 and "is running" in more.stderr
    assert (camp / "config.yaml").read_text() == "name: locked\nrounds: 3\n"  # untouched


def test_local_researcher_campaign(setup):
    """The local MoE researcher proposes under the surface grammar, learns, and checkpoints."""
    root, scaffold, _ = setup
    args = overrides(root, scaffold, name="local", rounds=2, researcher="local", seed=1)
    assert main(["start", *args]) == 0
    camp = root / "runs" / "local"
    history = json.loads((camp / "journal.json").read_text())["state"]["history"]
    assert [h["round"] for h in history] == [0, 1, 2]
    for n in (1, 2):  # grammar-constrained: every proposal passed validation and was evaluated
        folder = camp / "rounds" / f"{n:03d}"
        folders = sorted(folder.glob("cand-*")) or [folder]  # a change to training has its greedy companion
        proposals = [json.loads((f / "proposal.json").read_text()) for f in folders]
        edits = proposals[0]["edits"]  # one edit, or edits stacked onto a near miss
        assert edits and all(set(e) in ({"knob", "value"}, {"move"}) for e in edits)
        assert (len(edits) > 1) == proposals[0]["hypothesis"].startswith("stack onto the near miss")
        assert [p["edits"] for p in proposals[1:]] == ([[*edits, {"knob": "sampling.temperature", "value": 0.0}]]
                                                       if len(folders) > 1 else [])
        for f in folders:
            assert json.loads((f / "result.json").read_text())["status"] == "ok"
    assert (camp / "researcher" / "checkpoint" / "config.json").is_file()


def test_eval_command(setup, capsys):
    root, scaffold, _ = setup
    base = root / "runs" / "models" / "base"
    code = main(["eval", "--scaffold", str(scaffold), "sampling.temperature=0.5", "--seeds", "0",
                 "--base", str(base), "--out", str(root / "eval")])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "failure categories" in out
    assert main(["eval", "--scaffold", str(scaffold), "temperature", "--base", str(base)]) == 2
    # A knob out of range, an unknown one or a missing scaffold: refused before anything runs, even
    # with no base yet (which would otherwise be pretrained first, for minutes).
    missing_base = root / "no-base-yet"
    for args, message in ((["sampling.temperature=9"], "above the maximum"), (["grpo.nope=1"], "unknown knob"),
                          (["--scaffold", str(root / "nowhere")], "does not exist")):
        capsys.readouterr()
        assert main(["eval", "--scaffold", str(scaffold), *args, "--base", str(missing_base),
                     "--out", str(root / "eval-bad")]) == 2
        assert message in " ".join(capsys.readouterr().err.split())
    assert not missing_base.exists() and not (root / "eval-bad").exists()


@pytest.mark.parametrize("item, message", [
    ("researcher.budget.tokens=1000", "has no researcher.budget"),
    ("rounds=ten", "rounds must be a positive integer"),
    ("rounds=-3", "rounds must be a positive integer"),
    ("researcher.budget.tokens=lots", "must be a positive number"),
    ("seed=4", "resume accepts runs_dir=, rounds= and researcher.budget"),
])
def test_resume_overrides_are_checked_before_the_config_is_touched(tmp_path, capsys, item, message):
    camp = tmp_path / "runs" / "frozen"
    camp.mkdir(parents=True)
    researcher = "openai\n  budget: {tokens: 10}" if "lots" in item else "random"
    frozen = f"name: frozen\nrounds: 5\nresearcher:\n  name: {researcher}\n"
    (camp / "config.yaml").write_text(frozen)
    assert main(["resume", "frozen", item, f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert (camp / "config.yaml").read_text() == frozen
