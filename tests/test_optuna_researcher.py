"""The Optuna baselines (`tpe`, `cmaes`): valid proposals that are the trial's configuration, trials
told what they scored, and a study that survives a kill -9 of the process that asked."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from fast_scaffold import TEST_PRESET, fast_scaffold

from harness.analyze import Evidence
from harness.cli import main
from harness.proposal import KnobEdit, MoveEdit, available_moves, parse_proposal, render, validate
from harness.researchers import make_researcher
from harness.researchers.base import knob_space
from model import build_policy, build_tokenizer, save_policy

REPO = Path(__file__).resolve().parents[1]
ARITH = REPO / "scaffolds" / "arith"


@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def evidence(round_no: int, accuracy: float = 0.4) -> Evidence:
    return Evidence(round=round_no, incumbent_accuracy=accuracy, incumbent_ci95=(accuracy - 0.05, accuracy + 0.05),
                    incumbent_metrics={}, knobs={}, failures={})


def study(campaign_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="campaign", storage=f"sqlite:///{campaign_dir / 'researcher' / 'optuna.db'}")


def score(values: dict) -> float:
    """A made-up objective: the lower the evaluation temperature, the better."""
    return 0.5 - 0.1 * values["sampling.temperature"]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_proposals_are_the_trial_and_trials_are_told_their_score(tmp_path, scaffold, sampler):
    specs, current = knob_space(scaffold)
    researcher = make_researcher({"name": sampler, "n_startup_trials": 4}, campaign_dir=tmp_path, seed=0,
                                 base_model="")
    told, moves, proposed_moves = [], [], []
    for n in range(1, 13):
        proposal = researcher.propose(evidence(n, accuracy=score(current)), "", scaffold)
        validate(proposal, scaffold)
        knobs = [e for e in proposal.edits if isinstance(e, KnobEdit)]
        proposed_moves.append([e.move for e in proposal.edits if isinstance(e, MoveEdit)])
        moves += proposed_moves[-1]
        candidate = current | {e.knob: e.value for e in knobs}
        assert all(e.value != current[e.knob] for e in knobs)
        assert all(specs[k].get("min", float("-inf")) <= v <= specs[k].get("max", float("inf"))
                   for k, v in candidate.items() if "choices" not in specs[k])
        delta = score(candidate) - score(current)
        researcher.learn(proposal, {"decision": "revert", "delta": delta})
        told.append(score(candidate))
    trials = [t for t in study(tmp_path).trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_round = {t.user_attrs["round"]: t for t in trials}
    assert sorted(by_round) == list(range(1, 13))
    for n, trial in by_round.items():
        assert trial.value == pytest.approx(told[n - 1])
        # the candidate is the trial's configuration, up to the short rounding of floats
        assert score(current | trial.params) == pytest.approx(told[n - 1], abs=1e-3)
    assert researcher.usage()["complete"] == 12
    # every move is a parameter, and the scaffold (never changed here) applies each one proposed
    assert {k.removeprefix("move:") for t in trials for k in t.params if k.startswith("move:")} == set(
        available_moves(scaffold))
    exclusive = [("prompt_one_shot", "prompt_instruction"), ("data_worded_forms", "data_bare_form")]
    assert set(moves) >= set(available_moves(scaffold)) - {second for _, second in exclusive}
    for n, trial in by_round.items():  # a round proposes exactly the moves its trial turned on
        on = {k.removeprefix("move:") for k, v in trial.params.items() if k.startswith("move:") and v}
        dropped = {second for first, second in exclusive if {first, second} <= on}  # the first declared one goes
        assert sorted(on - dropped) == sorted(proposed_moves[n - 1])


def test_a_failed_round_is_a_failed_trial(tmp_path, scaffold):
    researcher = make_researcher({"name": "tpe"}, campaign_dir=tmp_path, seed=1, base_model="")
    proposal = researcher.propose(evidence(1), "", scaffold)
    researcher.learn(proposal, {"decision": "failed", "delta": None})
    (trial,) = study(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["round"] == 1


KILLED = """
import json, os, signal, sys
from pathlib import Path
from harness.analyze import Evidence
from harness.researchers import make_researcher
camp, scaffold = Path(sys.argv[1]), Path(sys.argv[2])
researcher = make_researcher({"name": "tpe"}, campaign_dir=camp, seed=0, base_model="")
ev = Evidence(round=1, incumbent_accuracy=0.4, incumbent_ci95=(0.35, 0.45), incumbent_metrics={}, knobs={}, failures={})
print(json.dumps(researcher.propose(ev, "", scaffold).to_dict()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_study_survives_kill_9_and_a_replayed_round_is_not_told_twice(tmp_path, scaffold):
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path), str(scaffold)], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = json.loads(killed.stdout)
    researcher = make_researcher({"name": "tpe"}, campaign_dir=tmp_path, seed=0, base_model="")
    again = researcher.propose(evidence(1), "", scaffold)
    assert again.to_dict() == before  # the resumed round proposes the trial it asked for
    researcher.learn(again, {"decision": "revert", "delta": 0.05})
    researcher.learn(again, {"decision": "revert", "delta": 0.30})  # a replay of the same round's learn
    (trial,) = study(tmp_path).trials
    assert trial.value == pytest.approx(0.45)
    researcher.propose(evidence(2), "", scaffold)
    assert [t.user_attrs["round"] for t in study(tmp_path).trials] == [1, 2]


@pytest.mark.slow
def test_tpe_campaign_from_the_command_line(tmp_path):
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, tmp_path / "runs" / "models" / "base")
    scaffold = fast_scaffold(tmp_path / "fast_arith")
    args = [f"runs_dir={tmp_path / 'runs'}", f"scaffold={scaffold}", "baseline_seeds=[0,1]", "eval_seeds=[0]",
            "reeval_seeds=[1]", "live=false", "tracking.enabled=false", "name=tpe", "rounds=2", "researcher=tpe"]
    assert main(["start", *args]) == 0
    camp = tmp_path / "runs" / "tpe"
    history = json.loads((camp / "journal.json").read_text())["state"]["history"]
    assert [h["round"] for h in history] == [0, 1, 2]
    trials = study(camp).trials
    assert [t.user_attrs["round"] for t in trials if t.state != optuna.trial.TrialState.FAIL] == [1, 2]
    told = {t.user_attrs["round"]: t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    for before, row in zip(history, history[1:]):
        if row["decision"] != "failed":  # the incumbent the round was measured against, plus its delta
            assert told[row["round"]] == pytest.approx(before["incumbent_accuracy"] + row["delta"])


def test_a_move_that_no_longer_applies_is_never_proposed(tmp_path, scaffold):
    applied = render(parse_proposal(
        {"hypothesis": "h", "edits": [{"move": "reward_partial_credit"}, {"move": "prompt_instruction"}]}), scaffold)
    for rel, text in applied.items():
        (scaffold / rel).write_text(text)
    researcher = make_researcher({"name": "tpe", "n_startup_trials": 4}, campaign_dir=tmp_path, seed=0, base_model="")
    proposed = set()
    for n in range(1, 9):
        proposal = researcher.propose(evidence(n), "", scaffold)
        validate(proposal, scaffold)
        proposed |= {e.move for e in proposal.edits if isinstance(e, MoveEdit)}
        researcher.learn(proposal, {"decision": "revert", "delta": 0.0})
    assert proposed == {"reward_near_miss_credit", "reward_malformed_penalty", "data_worded_forms", "data_bare_form"}
