"""A campaign killed mid-round by the code before journal version 2 resumes under today's code.

Version 1 scored a keep on held-out inside `decide` and learned inside `record`, behind a
`learned_round` marker; today those are the `heldout` and `learn` steps. The old code runs from
git (commit OLD), is killed with SIGKILL at a chosen point of round 1, and the campaign is
resumed in this process: round 1 must finish without scoring held-out or learning again, and the
campaign must go on to round 2.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import git
import pytest
import yaml
from fast_scaffold import campaign_root
from mlflow.tracking import MlflowClient

import harness.campaign as campaign_module
from harness.cli import main
from harness.researchers.scripted import ScriptedResearcher

ROOT = Path(__file__).resolve().parents[1]
OLD = "04c00bd"  # the last commit that writes version 1 journals
PROPOSALS = [
    {"hypothesis": "lower temperature sharpens answers", "edits": [{"knob": "sampling.temperature", "value": 0.3}]},
    {"hypothesis": "narrower nucleus", "edits": [{"knob": "sampling.top_p", "value": 0.9}]},
]

# Runs the old CLI with a SIGKILL planted in round 1: "decided" right after its `decide` step
# (held-out already scored, nothing learned), "learned" inside `record` once the researcher has
# learned and the `learned_round` marker is set (the plot is drawn next).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    import harness.campaign as campaign

    def kill_in_round_1(fn, round_of):
        def wrapped(*args, **kwargs):
            if round_of(*args) == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    if sys.argv[1] == "decided":
        campaign.Campaign._record = kill_in_round_1(campaign.Campaign._record, lambda self, n, *rest: n)
    else:
        campaign.progress_plot = kill_in_round_1(
            campaign.progress_plot, lambda history, *rest: max(h["round"] for h in history))
    from harness.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def old_code(tmp_path_factory):
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"commit {OLD} (the code that writes version 1 journals) is not in this checkout's history")
    tree = tmp_path_factory.mktemp("old-code")
    archive = tree.parent / "old-code.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), OLD], check=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tree)], check=True)
    return tree


def runnable_by_both(scaffold: Path) -> Path:
    """The fast scaffold with the knob the old code trains by, `grpo.max_steps` (1 step); today's
    code trains on the scaffold's budget of completions and never reads the knob."""
    config = yaml.safe_load((scaffold / "scaffold.yaml").read_text())
    config["grpo"]["max_steps"] = 1
    (scaffold / "scaffold.yaml").write_text(yaml.safe_dump(config))
    surface = yaml.safe_load((scaffold / "surface.yaml").read_text())
    surface["knobs"]["grpo.max_steps"] = {"type": "int", "min": 1, "max": 40}
    (scaffold / "surface.yaml").write_text(yaml.safe_dump(surface))
    return scaffold


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, scaffold, script = campaign_root(tmp_path_factory.mktemp("old-journal"), PROPOSALS)
    return root, runnable_by_both(scaffold), script


@pytest.mark.slow
@pytest.mark.parametrize("point", ["decided", "learned"])
def test_a_round_killed_under_version_1_resumes(old_code, setup, point, monkeypatch):
    root, scaffold, script = setup
    runs, name = root / "runs", f"old-{point}"
    camp = runs / name
    # margin -1: every evaluated candidate is kept, so round 1 is a keep with a held-out score.
    args = [f"runs_dir={runs}", f"scaffold={scaffold}", "baseline_seeds=[0,1]", "eval_seeds=[0]",
            "reeval_seeds=[1]", "live=false", f"name={name}", "rounds=2", "margin=-1", "researcher=scripted",
            f"researcher.file={script}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(old_code)}
    old_run = subprocess.run([sys.executable, "-c", DRIVER, point, "start", *args], cwd=old_code, env=env,
                             capture_output=True, text=True, timeout=900)
    assert old_run.returncode == -9, old_run.stderr[-3000:]

    old = json.loads((camp / "journal.json").read_text())
    assert old["version"] == 1
    steps = old["rounds"]["1"]["steps"]
    assert "record" not in steps and steps["decide"]["output"]["decision"] == "keep"
    heldout = steps["decide"]["output"]["heldout_accuracy"]
    assert isinstance(heldout, float)
    assert old["state"].get("learned_round") == (1 if point == "learned" else None)
    candidate = steps["apply"]["output"]["commit"]
    assert git.Repo(camp / "scaffold").heads["main"].commit.hexsha == candidate  # the keep reached git

    evaluated, learned = [], []
    run_scaffold = campaign_module.run_scaffold

    def counting_run_scaffold(scaffold_dir, out, **kwargs):
        evaluated.append(Path(out).relative_to(camp).as_posix())
        return run_scaffold(scaffold_dir, out, **kwargs)

    monkeypatch.setattr(campaign_module, "run_scaffold", counting_run_scaffold)
    monkeypatch.setattr(ScriptedResearcher, "learn", lambda self, proposal, verdict: learned.append(
        (proposal.hypothesis, verdict["decision"])), raising=False)
    assert main(["resume", name, f"runs_dir={runs}"]) == 0

    # Round 1 went on from where it was killed: nothing evaluated or scored again; it learned
    # only if the old code had not. Round 2 ran whole under today's steps: its candidate is trained
    # by today's code, its incumbent was by the old code, so its keep is checked on fresh training
    # seeds, both trained by today's code, and its held-out change is over those seeds too (round 1,
    # which the old code scored on training seed 0 alone, scored with them in round 2's folder).
    retrained = [f"rounds/{n:03d}/retrain/seed-{seed}" for seed in (1, 2) for n in (2, 1)]
    held = [f"rounds/002/heldout/{side}train-seed-{seed}" for seed in (1, 2) for side in ("", "before/")]
    assert evaluated == ["rounds/002", *retrained, "rounds/002/heldout", *held]
    assert learned == ([] if point == "learned" else [(PROPOSALS[0]["hypothesis"], "keep")]) + \
        [(PROPOSALS[1]["hypothesis"], "keep")]
    journal = json.loads((camp / "journal.json").read_text())
    assert journal["version"] == 2 and "learned_round" not in journal["state"]
    assert journal["state"]["status"] == "finished"
    round1 = journal["rounds"]["1"]["steps"]
    assert round1["heldout"]["output"] == {"heldout_accuracy": heldout}
    assert round1["decide"]["output"]["commits"]["candidate"] == candidate
    assert {"learn", "record"} <= set(round1)
    assert set(journal["rounds"]["2"]["steps"]) == {"analyze", "propose", "gate_proposal", "apply", "evaluate",
                                                     "compare", "retrain", "critique", "gate_keep", "decide",
                                                     "heldout", "learn", "record"}
    history = journal["state"]["history"]
    assert [(h["round"], h["decision"]) for h in history] == [(0, "baseline"), (1, "keep"), (2, "keep")]
    assert history[1]["heldout_accuracy"] == heldout
    repo = git.Repo(camp / "scaffold")
    assert repo.heads["main"].commit.parents[0].hexsha == candidate  # round 2 was kept on top of round 1
    assert not repo.is_dirty(untracked_files=True)
    memory = (camp / "memory.md").read_text()
    assert "Round 1" in memory and "Round 2" in memory
    assert "temperature: 0.3" in (camp / "rounds" / "001" / "diff.patch").read_text()
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    rounds = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                                f"tags.campaign = '{name}'")
    tags = {r.data.tags["round"]: r.data.tags for r in rounds if "round" in r.data.tags}
    assert sorted(tags) == ["0", "1", "2"]
    assert tags["1"]["commit.candidate"] == candidate and tags["1"]["decision"] == "keep"
