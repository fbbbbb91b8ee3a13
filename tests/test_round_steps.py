"""A round killed at every step resumes to the same end, doing each step's work once.

The runner is replaced by a fake that writes a synthetic `result.json` in a blink (scores set by
the scaffold's temperature knob and the training seed), so a round can be run, killed and resumed
many times: real git, journal, memory and researcher, no training. The one round is a keep of a
change to training that needs re-evaluation first and then holds on a fresh training seed, so it
goes through every step of `STEPS`; with a gate that rejects, it is a revert.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fast_scaffold import fast_scaffold

import harness.campaign as campaign_module
from harness.campaign import Campaign
from harness.candidates import CandidatesCampaign
from harness.campaigns import create_campaign
from harness.config import compose_config
from harness.journal import STEPS, Journal
from harness.researchers.scripted import ScriptedResearcher
from harness.workspace import Workspace
from rl_pipeline.result import SCHEMA_VERSION, scaffold_commit

N = 200
PROPOSAL = {"hypothesis": "lower temperature, faster learning", "edits": [
    {"knob": "sampling.temperature", "value": 0.3}, {"knob": "grpo.learning_rate", "value": 1e-5}]}


class Killed(BaseException):
    """Stands for a kill -9: nothing in the campaign catches it."""


def scores(temperature: float, seed: int, train_seed: int) -> np.ndarray:
    """Half the examples right, a few flipping with the seed; at temperature 0.3 a small gain that
    one seed cannot tell from noise (a re-evaluation) and two seeds can (a keep), larger when
    trained with a fresh seed (so it holds across training seeds)."""
    column = np.zeros(N, dtype=int)
    column[:100] = 1
    if seed % 2:
        column[96:100], column[100:104] = 0, 1
    if temperature < 1.0:
        column[110:116 + 10 * (seed + train_seed)], column[0:2] = 1, 0
    return column


def split(temperature: float, seeds: list[int], train_seed: int = 0) -> dict:
    matrix = np.stack([scores(temperature, s, train_seed) for s in seeds], axis=1)
    return {"metrics": {"accuracy": float(matrix.mean()), "accuracy_ci95": [0.0, 1.0]},
            "per_example": {f"ex{i:03d}": [int(v) for v in row] for i, row in enumerate(matrix)}}


DATA_HASHES = {"train": "t" * 16, "eval": "e" * 16, "heldout": "h" * 16}
# The candidate re-trained with the fresh seed, then the incumbent (the baseline) with the same seed.
RETRAINED = ["rounds/001/retrain/seed-1", "rounds/000/retrain/seed-1"]


def fake_run_scaffold(scaffold_dir, out, *, heldout=False, seeds, train_seed, **options) -> dict:
    config = yaml.safe_load((Path(scaffold_dir) / "scaffold.yaml").read_text())
    temperature = config["sampling"]["temperature"]
    code = [(Path(scaffold_dir) / name).read_text() for name in ("reward.py", "prompt.py", "data.py")
            if (Path(scaffold_dir) / name).is_file()]  # data.py is optional
    trained = json.dumps([config["grpo"], config["reward"], code, train_seed], sort_keys=True)  # as the cache key
    result = {"schema_version": SCHEMA_VERSION, "status": "ok", "seeds": list(seeds),
              "scaffold": {"path": str(scaffold_dir), "commit": scaffold_commit(scaffold_dir)},
              "data_hashes": DATA_HASHES,  # the runner's fields the campaign's integrity check reads
              "training": {"key": hashlib.sha256(trained.encode()).hexdigest()[:24], "train_seed": train_seed},
              "knobs": {"sampling.temperature": temperature}, "failures": {}} | split(temperature, seeds, train_seed)
    if heldout:
        result["heldout"] = split(temperature, seeds) | {"seeds": list(seeds)}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result))
    return result


def new_campaign(tmp_path, name, *overrides) -> tuple[dict, Path]:
    script = tmp_path / "proposals.jsonl"
    script.write_text(json.dumps(PROPOSAL) + "\n")
    scaffold = tmp_path / "fast_arith"
    if not scaffold.exists():
        fast_scaffold(scaffold)
    config = compose_config([f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"scaffold={scaffold}",
                             "rounds=1", "researcher=scripted", f"researcher.file={script}", "baseline_seeds=[0,1]",
                             "eval_seeds=[0]", "reeval_seeds=[1]", "retrain_seeds=[1]", "live=false",
                             "tracking.enabled=false", *overrides])
    return config, create_campaign(config)


def outcome(path: Path) -> dict:
    """What a finished campaign ended with, free of timestamps and commit ids."""
    journal = Journal(path)
    memory = re.sub(r" at \d{4}-\d\d-\d\dT\S+", "", (path / "memory.md").read_text())  # approval times
    return {"history": journal.get("history"), "incumbent_round": journal.get("incumbent")["round"],
            "steps": [s for s in STEPS if journal.is_done(1, s)],
            "decide": journal.step_output(1, "decide")["decision"],
            "verdict": journal.step_output(1, "reeval")["verdict"], "retrain": journal.step_output(1, "retrain"),
            "last_round": journal.step_output(1, "record")["last_round"], "memory": memory,
            "result": {k: v for k, v in json.loads((path / "rounds" / "001" / "result.json").read_text()).items()
                       if k != "scaffold"}}  # its folder and commit id differ from campaign to campaign


def watch(monkeypatch) -> dict:
    """Every evaluation (its folder under rounds/), git decision and learning the campaign does."""
    done = {"evaluated": [], "kept": [], "reverted": [], "learned": []}

    def run(scaffold_dir, out, **kwargs):
        parts = Path(out).parts
        done["evaluated"].append("/".join(parts[len(parts) - 1 - parts[::-1].index("rounds"):]))
        return fake_run_scaffold(scaffold_dir, out, **kwargs)

    keep, revert = Workspace.keep, Workspace.revert
    monkeypatch.setattr(campaign_module, "run_scaffold", run)
    monkeypatch.setattr(Workspace, "keep", lambda self, n: done["kept"].append(n) or keep(self, n))
    monkeypatch.setattr(Workspace, "revert", lambda self, n, why, candidate=None: done["reverted"].append(
        (n, candidate)) or revert(self, n, why, candidate))
    monkeypatch.setattr(ScriptedResearcher, "learn", lambda self, proposal, verdict: done["learned"].append(
        (proposal.hypothesis, verdict["decision"])), raising=False)
    return done


def kill_after(monkeypatch, step: str, run) -> None:
    """`run()`, a campaign's run, killed as by a kill -9 right after `step` is journaled."""
    step_done = Journal.step_done

    def killed_after(self, n, name, output, **kwargs):
        step_done(self, n, name, output, **kwargs)
        if name == step:
            raise Killed(step)

    with monkeypatch.context() as m:
        m.setattr(Journal, "step_done", killed_after)
        with pytest.raises(Killed):
            run()


@pytest.fixture
def effects(monkeypatch):
    return watch(monkeypatch)


def reference_run(tmp_path_factory, new_campaign, kind, outcome) -> tuple:
    """A campaign of class `kind` run without a kill: its status, folder, outcome and effects."""
    tmp_path = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        done = watch(monkeypatch)
        config, path = new_campaign(tmp_path, "whole")
        status = kind(config, path).run()["status"]
    return status, path, outcome(path), done


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The round run without a kill: how it ends, and what it did."""
    return reference_run(tmp_path_factory, new_campaign, Campaign, outcome)


def test_an_uninterrupted_round_goes_through_every_step(reference):
    status, path, end, effects = reference
    assert status == "finished"
    assert end["steps"] == list(STEPS)
    assert Journal(path).step_output(1, "compare")["verdict"]["decision"] == "reeval"
    assert end["decide"] == end["verdict"]["decision"] == end["retrain"]["verdict"]["decision"] == "keep"
    assert end["incumbent_round"] == 1
    assert [p["train_seed"] for p in end["retrain"]["per_seed"]] == [0, 1]
    assert end["result"]["seeds"] == [0, 1]  # the re-evaluation's seed merged into the candidate's result
    assert end["history"][1]["heldout_accuracy"] == split(0.3, [0])["metrics"]["accuracy"]
    # (the baseline was evaluated on the re-evaluation's seed already: no `rounds/000/seeds-1`)
    # The keep's held-out change is over both training seeds: the new incumbent and the baseline
    # scored with training seed 1 as well, in the round's folder.
    by_seed = end["history"][1]["heldout_by_train_seed"]
    assert set(by_seed) == {"0", "1"} and by_seed["0"] > 0
    assert end["history"][1]["heldout_delta"] == pytest.approx((by_seed["0"] + by_seed["1"]) / 2)
    assert effects == {"evaluated": ["rounds/000", "rounds/001", "rounds/001/reeval", *RETRAINED, "rounds/001/heldout",
                                     "rounds/001/heldout/train-seed-1", "rounds/001/heldout/before/train-seed-1"],
                       "kept": [1], "reverted": [], "learned": [(PROPOSAL["hypothesis"], "keep")]}


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_after_any_step_resumes_without_redoing_it(tmp_path, reference, effects, monkeypatch, step):
    _, _, end, reference_effects = reference
    config, path = new_campaign(tmp_path, "killed")
    kill_after(monkeypatch, step, Campaign(config, path).run)
    journal = Journal(path)
    assert journal.is_done(1, step) and journal.round_done(1) == (step == "record")
    assert Campaign(config, path).run()["status"] == "finished"
    assert outcome(path) == end
    assert effects == reference_effects  # every evaluation, git change and update happened once


@pytest.mark.parametrize("step", ["analyze", "propose", "evaluate", "compare", "retrain", "critique", "decide"])
def test_a_round_killed_under_one_candidate_resumes_under_several_to_the_same_end(tmp_path, reference, effects,
                                                                                   monkeypatch, step):
    """A campaign of the release before decoder companions ran one candidate a round; resumed now
    (a local researcher's campaign runs as several candidates), its round in flight ends the same."""
    _, _, end, reference_effects = reference
    config, path = new_campaign(tmp_path, "killed")
    kill_after(monkeypatch, step, Campaign(config, path).run)
    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    assert outcome(path) == end
    assert effects == reference_effects


@pytest.mark.parametrize("step", ["reeval", "retrain", "decide", "heldout", "learn", "record"])
def test_a_kill_inside_a_step_redoes_only_that_step(tmp_path, reference, effects, monkeypatch, step):
    """Killed after its work and before its record: the step runs again, to the same end."""
    config, path = new_campaign(tmp_path, "killed")
    step_done = Journal.step_done

    def killed_before(self, n, name, output, **kwargs):
        if name == step:
            raise Killed(step)
        step_done(self, n, name, output, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Journal, "step_done", killed_before)
        with pytest.raises(Killed):
            Campaign(config, path).run()
    assert not Journal(path).is_done(1, step)
    assert Campaign(config, path).run()["status"] == "finished"
    assert outcome(path) == reference[2]


@pytest.mark.parametrize("approvals, steps, evaluated, reason", [
    ("keep", ["analyze", "propose", "gate_proposal", "apply", "evaluate", "compare", "reeval", "retrain", "critique",
              "gate_keep", "decide", "learn", "record"], ["rounds/000", "rounds/001", "rounds/001/reeval", *RETRAINED],
     "keep rejected by timeout: no answer within"),
    ("every_n", ["analyze", "propose", "gate_proposal", "decide", "learn", "record"], ["rounds/000"],
     "proposal rejected by timeout"),
])
def test_a_rejection_at_a_gate_is_a_revert(tmp_path, effects, approvals, steps, evaluated, reason):
    """Nobody answers the approval in time and the policy's default, reject, applies."""
    config, path = new_campaign(tmp_path, approvals, f"approvals={approvals}", "approvals.n=1",
                                "approvals.timeout_s=0.01")
    assert Campaign(config, path).run()["status"] == "finished"
    journal = Journal(path)
    decided = journal.step_output(1, "decide")
    assert [s for s in STEPS if journal.is_done(1, s)] == steps
    assert decided["decision"] == "revert" and decided["reason"].startswith(reason)
    assert journal.get("incumbent")["round"] == 0 and journal.get("history")[1]["heldout_accuracy"] is None
    applied = steps.count("apply")  # a rejected proposal is never applied, so there is nothing to revert
    assert effects == {"evaluated": evaluated, "kept": [], "reverted": [(1, None)] * applied,
                       "learned": [(PROPOSAL["hypothesis"], "revert")]}
