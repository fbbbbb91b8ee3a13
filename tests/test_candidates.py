"""Rounds of several candidates: every candidate applied, evaluated from its own commit and
compared; the best re-tested on fresh seeds, at the level K candidates call for, before its keep; the others reverted; git,
memory, files and the researcher's trials handling all of them; a kill after any step resumes to
the same end, doing each evaluation once.

The runner is test_round_steps' fake (scores set by the scaffold's temperature knob: 0.3 is a small
gain, 1.2 none), so rounds take a blink; git, journal, memory and researchers are real.
"""

import json
import re
from pathlib import Path

import git
import optuna
import pytest
import yaml
from fast_scaffold import TEST_PRESET, fast_scaffold
from test_round_steps import Killed, kill_after, reference_run, watch

from harness.campaigns import create_campaign
from harness.candidates import CandidatesCampaign
from harness.config import ConfigError, compose_config
from harness.journal import STEPS, Journal
from harness.researchers.local import LocalResearcher
from model import build_policy, build_tokenizer, save_policy

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"

PROPOSALS = [
    {"hypothesis": "lower temperature", "edits": [{"knob": "sampling.temperature", "value": 0.3}]},
    {"hypothesis": "higher temperature", "edits": [{"knob": "sampling.temperature", "value": 1.2}]},
]


def new_campaign(tmp_path, name, *overrides, proposals=PROPOSALS) -> tuple[dict, object]:
    script = tmp_path / "proposals.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    scaffold = tmp_path / "fast_arith"
    if not scaffold.exists():
        fast_scaffold(scaffold)
    scripted = [] if any(o.startswith("researcher=") for o in overrides) else [
        "researcher=scripted", f"researcher.file={script}"]
    config = compose_config([f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"scaffold={scaffold}", "rounds=1",
                             *scripted, "baseline_seeds=[0,1]",
                             "eval_seeds=[0]", "reeval_seeds=[1]", "live=false", "tracking.enabled=false",
                             "candidates_per_round=2", *overrides])
    return config, create_campaign(config)


def outcome(path) -> dict:
    journal = Journal(path)
    return {"history": journal.get("history"), "incumbent": journal.get("incumbent")["result"],
            "steps": [s for s in STEPS if journal.is_done(1, s)],
            "compare": journal.step_output(1, "compare"), "reeval": journal.step_output(1, "reeval")["verdict"],
            "decide": journal.step_output(1, "decide")["decision"],
            "memory": re.sub(r" at \d{4}-\d\d-\d\dT\S+", "", (path / "memory.md").read_text()),  # approval times
            "candidates": [{k: v for k, v in c.items() if k != "commit"}
                           for c in json.loads((path / "rounds" / "001" / "candidates.json").read_text())]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory, new_campaign, CandidatesCampaign, outcome)


def test_the_best_of_two_is_kept_only_after_its_retest_on_fresh_seeds(reference):
    status, path, end, effects = reference
    # The kept change is to sampling, which reuses the trained policy: no re-training on fresh seeds.
    assert status == "finished" and end["steps"] == [s for s in STEPS if s != "retrain"]
    compared = end["compare"]
    assert compared["chosen"] == 1 and [v["delta"] for v in compared["candidates"]] == [0.02, 0.0]
    assert compared["verdict"]["decision"] == "reeval" and "the best of 2 candidates" in compared["verdict"]["reason"]
    # The keep is decided after the fresh seed (1), on both seeds, at the 97.5% level two candidates call for.
    assert end["reeval"]["decision"] == end["decide"] == "keep" and end["reeval"]["n_seeds"] == 2
    assert end["reeval"]["delta"] == pytest.approx(0.045) and "97.50% CI" in end["reeval"]["reason"]
    assert end["incumbent"] == "rounds/001/cand-1"
    assert json.loads((path / "rounds" / "001" / "cand-1" / "result.json").read_text())["seeds"] == [0, 1]
    assert effects == {"evaluated": ["rounds/000", "rounds/001/cand-1", "rounds/001/cand-2", "rounds/001/cand-1/retest",
                                     "rounds/001/cand-1/heldout"], "kept": [1], "reverted": [(1, 2)],
                       "learned": [("lower temperature", "keep"), ("higher temperature", "revert")]}
    # git: the chosen one is cand/001 and main; the other is pinned as rejected, with why
    repo = git.Repo(path / "scaffold")
    assert repo.heads["main"].commit == repo.heads["cand/001"].commit == repo.heads["cand/001-1"].commit
    assert repo.git.notes("--ref", "rejected", "show", "refs/rejected/001-2").startswith(
        "revert: not the best of the round (revert: accuracy +0.000")
    assert not repo.is_dirty(untracked_files=True) and not any((path / "snapshots").iterdir())
    assert repo.git.worktree("list").count("\n") == 0  # the snapshots are gone from git too
    assert [c["chosen"] for c in end["candidates"]] == [True, False]
    assert [c["verdict"]["decision"] for c in end["candidates"]] == ["keep", "revert"]
    assert "candidate 2: higher temperature: not the best of the round" in end["memory"]


@pytest.mark.parametrize("step", [s for s in STEPS if s != "retrain"])  # a sampling keep: no retrain
def test_a_kill_after_any_step_resumes_to_the_same_end(tmp_path, reference, monkeypatch, step):
    _, _, end, reference_effects = reference
    effects = watch(monkeypatch)
    config, path = new_campaign(tmp_path, "killed")
    kill_after(monkeypatch, step, CandidatesCampaign(config, path).run)
    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    assert outcome(path) == end
    assert effects == reference_effects


def test_tpe_asks_k_trials_a_round_and_tells_each_its_own_score(tmp_path, monkeypatch):
    watch(monkeypatch)
    config, path = new_campaign(tmp_path, "tpe", "researcher=tpe", "rounds=3")
    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    study = optuna.load_study(study_name="campaign", storage=f"sqlite:///{path / 'researcher' / 'optuna.db'}")
    proposed = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert sorted(t.user_attrs["round"] for t in proposed) == [1, 1, 2, 2, 3, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in proposed)  # none left running
    for n in (1, 2, 3):
        summary = json.loads((path / "rounds" / f"{n:03d}" / "candidates.json").read_text())
        told = sorted(t.value for t in proposed if t.user_attrs["round"] == n)
        incumbent = next(h for h in Journal(path).get("history") if h["round"] == n - 1)["incumbent_accuracy"]
        assert told == pytest.approx(sorted(incumbent + c["verdict"]["delta"] for c in summary))


def test_local_proposes_k_distinct_candidates_and_learns_from_each(tmp_path, monkeypatch):
    done = watch(monkeypatch)
    base = tmp_path / "base"
    tokenizer = build_tokenizer([(ARITH / "surface.yaml").read_text(), (ARITH / "moves.yaml").read_text()])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, base)
    config, path = new_campaign(tmp_path, "local", "researcher=local", "researcher.context_tokens=256",
                                f"base_model={base}", "rounds=2", "researcher.companions=false")
    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    for n in (1, 2):
        summary = json.loads((path / "rounds" / f"{n:03d}" / "candidates.json").read_text())
        assert len(summary) == 2 and summary[0]["proposal"]["edits"] != summary[1]["proposal"]["edits"]
        assert f"rounds/{n:03d}/cand-1" in done["evaluated"] and f"rounds/{n:03d}/cand-2" in done["evaluated"]
    state = json.loads((path / "researcher" / "checkpoint" / "state.json").read_text())
    assert state["rounds_learned"] == 4 and state["last_learned_round"] == 2 and state["learned_in_round"] == [0, 1]
    assert len(state["observations"]) == 4


def test_a_kill_between_two_candidates_learns_resumes_to_the_same_researcher(tmp_path, monkeypatch):
    """The researcher learns from a round's candidates in memory and the campaign saves it once:
    a kill after the first candidate's update (nothing saved yet) resumes from the checkpoint before
    the round and learns both again, ending where a campaign without the kill ends."""
    watch(monkeypatch)
    base = tmp_path / "base"
    tokenizer = build_tokenizer([(ARITH / "surface.yaml").read_text(), (ARITH / "moves.yaml").read_text()])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, base)
    options = ("researcher=local", "researcher.context_tokens=256", "researcher.learning_rate=1e-3",
               f"base_model={base}", "rounds=2", "researcher.companions=false")
    config, whole = new_campaign(tmp_path, "whole", *options)
    assert CandidatesCampaign(config, whole).run()["status"] == "finished"

    learn, calls = LocalResearcher.learn, []

    def killed_in_round_2(self, proposal, verdict):
        learn(self, proposal, verdict)
        calls.append(json.loads(self.pending_file.read_text())["round"])
        if calls.count(2) == 1:
            raise Killed("learn")

    config, path = new_campaign(tmp_path, "killed", *options)
    with monkeypatch.context() as m:
        m.setattr(LocalResearcher, "learn", killed_in_round_2)
        with pytest.raises(Killed):
            CandidatesCampaign(config, path).run()
    on_disk = json.loads((path / "researcher" / "checkpoint" / "state.json").read_text())
    assert on_disk["last_learned_round"] == 1 and on_disk["rounds_learned"] == 2  # round 2's update was lost

    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    ends = [(p / "researcher" / "checkpoint") for p in (whole, path)]
    states = [json.loads((c / "state.json").read_text()) for c in ends]
    assert states[1]["rounds_learned"] == 4 and states[1]["learned_in_round"] == [0, 1]
    assert states[1] == states[0]
    assert (ends[1] / "model.safetensors").read_bytes() == (ends[0] / "model.safetensors").read_bytes()


def test_a_change_to_training_comes_with_its_decoder_companion_trained_once(tmp_path, monkeypatch):
    """With K = 1, a round whose proposal changes training holds two candidates, the proposal and
    its companion under the scaffold's decoder (greedy), evaluated from the same trained policy; the
    better (here the greedy one: the fake scores any temperature below 1 higher) is re-tested and
    re-trained before its keep, both at the level two candidates call for, and the researcher records the
    companion as the proposal's edits plus the decoder's. A sampling-only round keeps the
    one-candidate layout."""
    done = watch(monkeypatch)
    base = tmp_path / "base"
    tokenizer = build_tokenizer([(ARITH / "surface.yaml").read_text(), (ARITH / "moves.yaml").read_text()])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, base)
    config, path = new_campaign(tmp_path, "companions", "researcher=local", "researcher.context_tokens=256",
                                f"base_model={base}", "rounds=3", "candidates_per_round=1", "retrain_seeds=[1]")
    assert CandidatesCampaign(config, path).run()["status"] == "finished"
    journal, repo = Journal(path), git.Repo(path / "scaffold")
    companion_rounds = 0
    for n in (1, 2, 3):
        proposed = journal.step_output(n, "propose")
        proposals = proposed.get("candidates") or [proposed["proposal"]]
        edits = proposals[0]["edits"]
        training = any("move" in e or not e["knob"].startswith("sampling.") for e in edits)
        before = journal.step_output(n, "decide")["commits"]["incumbent_before"]
        incumbent = yaml.safe_load(repo.commit(before).tree["scaffold.yaml"].data_stream.read())
        greedy_already = incumbent["sampling"]["temperature"] == 0.0  # an earlier round kept the companion
        if not training or greedy_already or any(e.get("knob", "").startswith("sampling.") for e in edits):
            assert len(proposals) == 1 and (path / "rounds" / f"{n:03d}" / "result.json").is_file()
            continue
        companion_rounds += 1
        assert [p["edits"] for p in proposals] == [edits, [*edits, {"knob": "sampling.temperature", "value": 0.0}]]
        plain, greedy = (json.loads((path / "rounds" / f"{n:03d}" / f"cand-{k}" / "result.json").read_text())
                         for k in (1, 2))
        assert plain["training"]["key"] == greedy["training"]["key"]  # one policy, two decoders
        compared = journal.step_output(n, "compare")
        assert compared["chosen"] == 2 and "best of 2 candidates" in journal.step_output(n, "reeval")["verdict"]["reason"]
        assert journal.step_output(n, "decide")["decision"] == "keep"
        assert f"rounds/{n:03d}/cand-2/retrain/seed-1" in done["evaluated"]
        assert "the level 2 candidates call for" in journal.step_output(n, "retrain")["verdict"]["reason"]
        committed = repo.commit(f"cand/{n:03d}").tree["scaffold.yaml"].data_stream.read()
        assert "temperature: 0.0" in committed.decode()
    assert companion_rounds >= 1  # seed 0's three rounds draw at least one change to training
    observations = json.loads((path / "researcher" / "checkpoint" / "state.json").read_text())["observations"]
    greedy = [o for o in observations if o["knob"] == "sampling.temperature" and o.get("stacked")]
    assert len(greedy) == companion_rounds and all(o["to"] == 0.0 and o["decision"] == "keep" for o in greedy)


@pytest.mark.parametrize("overrides, message", [
    (["researcher=openai"], "candidates_per_round > 1 needs researcher local, random, tpe, cmaes, scripted"),
    (["reeval_seeds=[0]"], "candidates_per_round > 1 needs reeval_seeds, none of them in eval_seeds"),
    (["researcher=local", "candidates_per_round=1", "reeval_seeds=[]"],
     "researcher.companions needs reeval_seeds, none of them in eval_seeds"),
])
def test_several_candidates_need_a_researcher_and_seeds_for_them(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        new_campaign(tmp_path, "bad", *overrides)
