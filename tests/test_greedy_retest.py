"""Under greedy decoding more seeds cannot settle a verdict (every seed gives the same answers):
the re-evaluation, the re-training across training seeds and the re-test of the best of several
candidates score the calibration split's examples instead, pooled with eval's.

As in test_round_steps, the runner is a fake that writes a synthetic result in a blink (the
campaign's decisions are under test: real git, journal, memory and researcher). Round 1 turns
decoding greedy (a clear keep); round 2 changes the learning rate for +4 points on eval, 10 examples
lost and 18 won: within noise on eval's 200 examples however many identical seeds, beyond it with
the calibration split's 400, where it loses 20 and wins 36.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fast_scaffold import fast_scaffold
from test_round_steps import DATA_HASHES, kill_after

import harness.campaign as campaign_module
from harness.campaign import Campaign
from harness.campaigns import create_campaign
from harness.candidates import CandidatesCampaign
from harness.config import compose_config
from harness.journal import Journal
from rl_pipeline.result import SCHEMA_VERSION, scaffold_commit

GREEDY = {"hypothesis": "greedy decoding", "edits": [{"knob": "sampling.temperature", "value": 0.0}]}
FASTER = {"hypothesis": "learn faster", "edits": [{"knob": "grpo.learning_rate", "value": 1e-5}]}
SIZES = {"eval": 200, "calibration": 400}


def column(split: str, temperature: float, learning_rate: float, seed: int) -> np.ndarray:
    """Sampled decoding: half right, a few flipping with the seed. Greedy: the same every seed, 65%
    right; a faster learning rate then loses the first 5% and wins 9% more."""
    n = SIZES[split]
    scores = np.zeros(n, dtype=int)
    if temperature > 0:
        scores[:n // 2] = 1
        if seed % 2:
            scores[n // 2 - 4:n // 2], scores[n // 2:n // 2 + 4] = 0, 1
        return scores
    right = int(0.65 * n)
    scores[:right] = 1
    if learning_rate > 1e-6:
        scores[:n // 20], scores[right:right + int(0.09 * n)] = 0, 1
    return scores


def part(split: str, config: dict, seeds: list[int]) -> dict:
    matrix = np.stack([column(split, config["sampling"]["temperature"], config["grpo"]["learning_rate"], s)
                       for s in seeds], axis=1)
    return {"metrics": {"accuracy": float(matrix.mean()), "accuracy_ci95": [0.0, 1.0]},
            "per_example": {f"{split}{i:03d}": [int(v) for v in row] for i, row in enumerate(matrix)}}


def fake_run_scaffold(scaffold_dir, out, *, heldout=False, calibration=False, seeds, train_seed, **options):
    config = yaml.safe_load((Path(scaffold_dir) / "scaffold.yaml").read_text())
    trained = json.dumps([config["grpo"], config["reward"], train_seed], sort_keys=True)
    result = {"schema_version": SCHEMA_VERSION, "status": "ok", "seeds": list(seeds),
              "scaffold": {"path": str(scaffold_dir), "commit": scaffold_commit(scaffold_dir)},
              "data_hashes": DATA_HASHES,
              "training": {"key": hashlib.sha256(trained.encode()).hexdigest()[:24], "train_seed": train_seed},
              "knobs": {"sampling.temperature": config["sampling"]["temperature"]}, "failures": {}}
    result |= part("eval", config, seeds)
    if heldout:
        result["heldout"] = part("eval", config, seeds) | {"seeds": list(seeds)}
    if calibration:
        result["calibration"] = part("calibration", config, seeds) | {"seeds": list(seeds), "data_hash": "c" * 16}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result))
    return result


@pytest.fixture
def evaluated(monkeypatch) -> list[str]:
    """The folder (under the campaign) of every evaluation, and whether it scored calibration."""
    done = []

    def run(scaffold_dir, out, **kwargs):
        parts = Path(out).parts
        folder = "/".join(parts[len(parts) - 1 - parts[::-1].index("rounds"):])
        done.append(folder + (" +calibration" if kwargs.get("calibration") else ""))
        return fake_run_scaffold(scaffold_dir, out, **kwargs)

    monkeypatch.setattr(campaign_module, "run_scaffold", run)
    return done


def new_campaign(tmp_path, *overrides) -> tuple[dict, Path]:
    script = tmp_path / "proposals.jsonl"
    script.write_text(json.dumps(GREEDY) + "\n" + json.dumps(FASTER) + "\n")
    fast_scaffold(tmp_path / "fast_arith")
    config = compose_config([f"runs_dir={tmp_path / 'runs'}", "name=greedy", f"scaffold={tmp_path / 'fast_arith'}",
                             "rounds=2", "researcher=scripted", f"researcher.file={script}", "baseline_seeds=[0,1]",
                             "eval_seeds=[0,1]", "reeval_seeds=[2]", "retrain_seeds=[1]", "live=false",
                             "tracking.enabled=false", *overrides])
    return config, create_campaign(config)


def test_a_greedy_gain_within_eval_noise_is_kept_on_calibration_examples(tmp_path, evaluated):
    config, path = new_campaign(tmp_path)
    assert Campaign(config, path).run()["status"] == "finished"
    journal = Journal(path)
    assert journal.step_output(1, "compare")["verdict"]["decision"] == "keep"  # sampled -> greedy: clear on eval
    compared = journal.step_output(2, "compare")["verdict"]
    assert compared["decision"] == "reeval" and compared["delta"] == pytest.approx(0.04)
    assert compared["n_examples"] == 200 and compared["ci95"][0] < 0
    reeval, retrain = journal.step_output(2, "reeval")["verdict"], journal.step_output(2, "retrain")["verdict"]
    assert reeval["decision"] == retrain["decision"] == journal.step_output(2, "decide")["decision"] == "keep"
    assert reeval["n_examples"] == retrain["n_examples"] == 600 and reeval["n_seeds"] == 1
    assert reeval["delta"] == pytest.approx(0.04) and reeval["ci95"][0] > 0
    assert reeval["reason"].startswith("every seed gives the same scores (deterministic decoding)")
    assert [p["train_seed"] for p in journal.step_output(2, "retrain")["per_seed"]] == [0, 1]
    assert journal.get("incumbent")["round"] == 2
    # No seed was added (they would change nothing); the incumbent's calibration result is reused
    # by the re-training, which scores each policy on eval and calibration on the first seed. The
    # keep's held-out change is over both training seeds: the new incumbent and round 1's (a keep
    # scored on training seed 0 alone) with training seed 1 too, on the first seed.
    assert evaluated == ["rounds/000", "rounds/001", "rounds/001/heldout", "rounds/002",
                         "rounds/002/calibration +calibration", "rounds/001/calibration +calibration",
                         "rounds/002/retrain/seed-1/calibration +calibration",
                         "rounds/001/retrain/seed-1/calibration +calibration", "rounds/002/heldout",
                         "rounds/002/heldout/train-seed-1", "rounds/002/heldout/before/train-seed-1"]
    assert json.loads((path / "rounds" / "002" / "calibration" / "result.json").read_text())["seeds"] == [0]
    seed_1 = path / "rounds" / "002" / "heldout" / "train-seed-1" / "result.json"
    assert json.loads(seed_1.read_text())["seeds"] == [0]
    assert "every seed gave the same answers" in (path / "rounds" / "002" / "critique.md").read_text()


def test_sampled_decoding_still_adds_seeds(tmp_path, evaluated):
    """Without greedy decoding the re-evaluation adds seeds, as before: no calibration run."""
    (tmp_path / "only").mkdir()
    config, path = new_campaign(tmp_path / "only", "rounds=1")
    (tmp_path / "only" / "proposals.jsonl").write_text(json.dumps(FASTER) + "\n")
    assert Campaign(config, path).run()["status"] == "finished"
    assert not any("calibration" in folder for folder in evaluated)


@pytest.mark.parametrize("step", ["reeval", "retrain", "critique", "decide", "record"])
def test_a_kill_resumes_to_the_same_end_without_scoring_calibration_twice(tmp_path, evaluated, monkeypatch, step):
    (tmp_path / "whole").mkdir()
    config, path = new_campaign(tmp_path / "whole")
    Campaign(config, path).run()
    reference, expected = Journal(path).get("history"), list(evaluated)
    evaluated.clear()
    (tmp_path / "killed").mkdir()
    config, path = new_campaign(tmp_path / "killed")
    kill_after(monkeypatch, step, Campaign(config, path).run)
    assert Campaign(config, path).run()["status"] == "finished"
    assert Journal(path).get("history") == reference and evaluated == expected
    assert Journal(path).step_output(2, "decide")["decision"] == "keep"


def test_the_best_of_several_candidates_is_retested_on_calibration_examples(tmp_path, evaluated):
    """Two candidates a round: the chosen one's re-test pools eval and calibration examples, at the
    level two candidates call for."""
    config, path = new_campaign(tmp_path, "candidates_per_round=2")
    script = tmp_path / "proposals.jsonl"
    hotter = {"hypothesis": "hotter sampling", "edits": [{"knob": "sampling.temperature", "value": 1.2}]}
    double = {"hypothesis": "learn faster still", "edits": [{"knob": "grpo.learning_rate", "value": 2e-5}]}
    script.write_text("\n".join(json.dumps(p) for p in (GREEDY, hotter, FASTER, double)) + "\n")
    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    reeval = Journal(path).step_output(2, "reeval")["verdict"]
    assert reeval["n_examples"] == 600 and "the best of 2 candidates" in reeval["reason"]
    assert reeval["reason"].startswith("every seed gives the same scores") and "97.50% CI" in reeval["reason"]
    assert "rounds/002/cand-1/calibration +calibration" in evaluated
    assert Journal(path).get("incumbent")["result"] == "rounds/002/cand-1"
