"""A keep scored on held-out beside the next round (`heldout_beside`) ends as one scored in place.

The runner is a fake that writes a synthetic `result.json` in a blink (scores set by the scaffold's
temperature knob, training seed and seed), so whole campaigns run, are killed and resume in
seconds: real git, journal, memory, researcher and MLflow, no training. Round 1 keeps a change to
training (re-trained on a fresh seed, so its held-out runs with that seed too), round 2 loses and
round 3 keeps again, scored against round 1's held-out (the last round scores in place).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fast_scaffold import fast_scaffold
from test_round_steps import DATA_HASHES, Killed

import harness.campaign as campaign_module
from harness.campaign import Campaign
from harness.candidates import CandidatesCampaign
from harness.campaigns import create_campaign
from harness.config import compose_config
from harness.journal import Journal
from harness.researchers import ResearcherStopped
from harness.researchers.scripted import ScriptedResearcher
from harness.tracking import MlflowTracker
from rl_pipeline.result import SCHEMA_VERSION, scaffold_commit

N = 200
ROUNDS = [{"hypothesis": "cooler and faster", "edits": [{"knob": "sampling.temperature", "value": 0.5},
                                                         {"knob": "grpo.learning_rate", "value": 1e-5}]},
          {"hypothesis": "warmer again", "edits": [{"knob": "sampling.temperature", "value": 0.9}]},
          {"hypothesis": "cooler still", "edits": [{"knob": "sampling.temperature", "value": 0.2}]}]
LOSER = {"hypothesis": "hot", "edits": [{"knob": "sampling.temperature", "value": 1.5}]}


def split(temperature: float, seeds: list[int], train_seed: int, offset: int) -> dict:
    """Half the examples right; below temperature 1 more of them, fewer on held-out (offset), a few
    flipping with the seed and the training seed."""
    gain = max(0, int((1 - temperature) * 60) - offset)
    columns = []
    for seed in seeds:
        column = np.zeros(N, dtype=int)
        column[:100] = 1
        column[100:100 + gain] = 1
        column[(seed + 3 * train_seed) % 7] = 0
        columns.append(column)
    matrix = np.stack(columns, axis=1)
    return {"metrics": {"accuracy": float(matrix.mean()), "accuracy_ci95": [0.0, 1.0]},
            "per_example": {f"ex{i:03d}": [int(v) for v in row] for i, row in enumerate(matrix)}}


def fake_run_scaffold(scaffold_dir, out, *, heldout=False, seeds, train_seed, **options) -> dict:
    config = yaml.safe_load((Path(scaffold_dir) / "scaffold.yaml").read_text())
    temperature = config["sampling"]["temperature"]
    result = {"schema_version": SCHEMA_VERSION, "status": "ok", "seeds": list(seeds),
              "scaffold": {"path": str(scaffold_dir), "commit": scaffold_commit(scaffold_dir)},
              "data_hashes": DATA_HASHES,
              "training": {"key": f"{config['grpo']}{train_seed}", "train_seed": train_seed},
              "knobs": {"sampling.temperature": temperature}, "failures": {}} | split(temperature, seeds, train_seed, 0)
    if heldout:
        result["heldout"] = split(temperature, seeds, train_seed, 4) | {"seeds": list(seeds)}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result))
    return result


@pytest.fixture
def batches(monkeypatch) -> list[list[str]]:
    """Every call of the runner: the folders (under rounds/) of the jobs it ran together."""
    calls = []
    run_checked = Campaign._run_checked

    def watched(self, jobs):
        calls.append([re.sub(r".*/rounds/", "", str(job["out"])) for job in jobs])
        return run_checked(self, jobs)

    monkeypatch.setattr(campaign_module, "run_scaffold", fake_run_scaffold)
    monkeypatch.setattr(Campaign, "_run_checked", watched)
    return calls


def new_campaign(tmp_path: Path, name: str, proposals: list[dict], *overrides) -> tuple[dict, Path]:
    script = tmp_path / f"{name}.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    scaffold = tmp_path / "fast_arith"
    if not scaffold.exists():
        fast_scaffold(scaffold)
    config = compose_config([f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"scaffold={scaffold}", "rounds=3",
                             "researcher=scripted", f"researcher.file={script}", "baseline_seeds=[0,1]",
                             "eval_seeds=[0,1]", "reeval_seeds=[2]", "retrain_seeds=[1]", "live=false",
                             f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])
    return config, create_campaign(config)


def ending(path: Path) -> dict:
    """What a finished campaign ended with, free of timestamps and commit ids."""
    journal = Journal(path)
    return {"history": journal.get("history"), "status": journal.get("status"),
            "heldout": {n: journal.step_output(n, "heldout") for n in (1, 2, 3)},
            "memory": re.sub(r" at \d{4}-\d\d-\d\dT\S+", "", (path / "memory.md").read_text())}  # approval times


def flat(calls: list[list[str]]) -> list[str]:
    return sorted(folder for call in calls for folder in call)


def test_a_keep_scored_beside_the_next_round_ends_as_one_scored_in_place(tmp_path, batches):
    config, path = new_campaign(tmp_path, "in-place", ROUNDS, "heldout_beside=false")
    assert Campaign(config, path).run()["status"] == "finished"
    in_place, in_place_calls = ending(path), list(batches)
    batches.clear()
    config, path = new_campaign(tmp_path, "beside", ROUNDS, "heldout_beside=true")
    assert Campaign(config, path).run()["status"] == "finished"
    beside = ending(path)

    assert beside == in_place
    kept = {h["round"]: h for h in beside["history"] if h["decision"] == "keep"}
    assert sorted(kept) == [1, 3]
    assert kept[1]["heldout_accuracy"] is not None and kept[1]["heldout_by_train_seed"].keys() == {"0", "1"}
    assert kept[3]["heldout_delta"] > 0 and beside["heldout"][2] is None
    # The same runs, none twice; round 1's held-out ones went with round 2's evaluation.
    assert flat(batches) == flat(in_place_calls)
    assert len(flat(batches)) == len(set(flat(batches)))
    assert ["002", "001/heldout", "001/heldout/train-seed-1", "001/heldout/before/train-seed-1"] in batches
    assert not any(call[0].startswith("001/heldout") for call in batches)  # none ran on its own
    # MLflow: round 1's child run and the parent's row carry the held-out score scored late.
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker._find("tags.campaign = 'beside' AND tags.round = '1'")
    assert run.data.metrics["heldout/accuracy"] == pytest.approx(kept[1]["heldout_accuracy"])
    assert run.data.metrics["heldout/delta_by_train_seed/1"] == pytest.approx(kept[1]["heldout_by_train_seed"]["1"])
    assert run.data.tags["false_keep"] == "false"
    parent = Journal(path).get("mlflow_run_id")
    logged = {m.step: m.value for m in tracker._mlflow.get_metric_history(parent, "heldout_accuracy")}
    assert logged == {h["round"]: pytest.approx(h["heldout_accuracy"]) for h in beside["history"]
                      if h["heldout_accuracy"] is not None}
    assert beside["memory"].count("Held-out accuracy") == 2


def kill_after(monkeypatch, n: int, step: str, run) -> None:
    """`run()` killed as by a kill -9 right after round `n`'s `step` is journaled."""
    step_done = Journal.step_done

    def killed_after(self, m, name, output, **kwargs):
        step_done(self, m, name, output, **kwargs)
        if (m, name) == (n, step):
            raise Killed(step)

    with monkeypatch.context() as patched:
        patched.setattr(Journal, "step_done", killed_after)
        with pytest.raises(Killed):
            run()


@pytest.mark.parametrize("n,step", [(1, "decide"), (1, "learn"), (1, "record"), (2, "analyze"), (2, "evaluate"),
                                    (1, "heldout"), (2, "compare"), (2, "record")])
def test_a_kill_around_a_keep_scored_beside_resumes_to_the_same_end(tmp_path, batches, monkeypatch, n, step):
    """Killed after a step of round 1 from its decision on, or of round 2 (where round 1's held-out
    step is journaled): the resumed campaign ends as an uninterrupted one, and runs no held-out
    evaluation twice."""
    config, path = new_campaign(tmp_path, "whole", ROUNDS, "heldout_beside=true", "tracking.enabled=false")
    Campaign(config, path).run()
    whole = ending(path)
    batches.clear()
    config, path = new_campaign(tmp_path, "killed", ROUNDS, "heldout_beside=true", "tracking.enabled=false")
    kill_after(monkeypatch, n, step, lambda: Campaign(config, path).run())
    assert Campaign(config, path).run()["status"] == "finished"
    assert ending(path) == whole
    held = [f for f in flat(batches) if f.startswith("001/heldout")]
    assert len(held) == len(set(held)) == 3


def test_a_keep_pending_when_the_researcher_runs_out_is_scored_before_the_campaign_ends(tmp_path, batches):
    config, path = new_campaign(tmp_path, "short", ROUNDS[:1], "heldout_beside=true", "tracking.enabled=false")
    assert Campaign(config, path).run()["status"] == "finished"
    journal = Journal(path)
    assert journal.step_output(1, "heldout")["heldout_accuracy"] == journal.get("history")[1]["heldout_accuracy"]
    assert journal.get("history")[1]["false_keep"] is False


def test_a_keep_pending_when_the_researcher_stops_is_scored_and_the_resume_ends_the_same(tmp_path, batches,
                                                                                        monkeypatch):
    config, path = new_campaign(tmp_path, "whole", ROUNDS, "heldout_beside=true", "tracking.enabled=false")
    Campaign(config, path).run()
    whole = ending(path)
    config, path = new_campaign(tmp_path, "stopped", ROUNDS, "heldout_beside=true", "tracking.enabled=false")
    propose_many = ScriptedResearcher.propose_many

    def spent(self, evidence, *args):
        if evidence.round == 2:
            raise ResearcherStopped("budget_exhausted", "the token budget is spent")
        return propose_many(self, evidence, *args)

    with monkeypatch.context() as patched:
        patched.setattr(ScriptedResearcher, "propose_many", spent)
        assert Campaign(config, path).run()["status"] == "budget_exhausted"
    journal = Journal(path)
    assert journal.get("history")[1]["heldout_accuracy"] == whole["history"][1]["heldout_accuracy"] is not None
    assert journal.current_round() == 2
    assert Campaign(config, path).run()["status"] == "finished"
    assert ending(path) == whole


def test_several_candidates_a_round_score_the_chosen_keep_beside_the_next_round(tmp_path, batches):
    proposals = [ROUNDS[0], LOSER, LOSER, ROUNDS[1], ROUNDS[2], LOSER]
    config, path = new_campaign(tmp_path, "in-place", proposals, "heldout_beside=false", "candidates_per_round=2")
    CandidatesCampaign(config, path).run()
    in_place = ending(path)
    batches.clear()
    config, path = new_campaign(tmp_path, "beside", proposals, "heldout_beside=true", "candidates_per_round=2")
    CandidatesCampaign(config, path).run()
    assert ending(path) == in_place
    assert ["002/cand-1", "002/cand-2", "001/cand-1/heldout", "001/cand-1/heldout/train-seed-1",
            "001/cand-1/heldout/before/train-seed-1"] in batches


def test_heldout_beside_defaults_to_off_on_the_local_runner(tmp_path, batches):
    config, path = new_campaign(tmp_path, "default", ROUNDS[:2], "tracking.enabled=false")
    assert config["heldout_beside"] is None
    Campaign(config, path).run()
    assert ["001/heldout", "001/heldout/train-seed-1", "001/heldout/before/train-seed-1"] not in batches
    assert ["001/heldout"] in batches and Journal(path).step_seconds(1, "heldout") is not None
