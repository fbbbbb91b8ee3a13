"""Decoder fills (harness/fill.py): the plan of a round on a pool's workers, how many sampling-only
candidates it takes without ending later, the seconds it plans with (read from a campaign's
results), and the fills the random and local researchers draw and learn from."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.analyze import Evidence
from harness.fill import FILL_NOTE, fill_count, makespan, recent_seconds, training_of
from harness.proposal import KnobEdit, MoveEdit, Proposal, validate
from harness.researchers import make_researcher
from fast_scaffold import TEST_PRESET
from model import build_policy, build_tokenizer, save_policy

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
DECODE = Proposal("nucleus", (KnobEdit("sampling.top_p", 0.5),))
TRAIN = Proposal("clip", (KnobEdit("grpo.epsilon", 0.4),))
COMPANION = Proposal("clip, greedy", (KnobEdit("grpo.epsilon", 0.4), KnobEdit("sampling.temperature", 0.0)))
OTHER = Proposal("partial credit", (MoveEdit("reward_partial_credit"),))


def decodes_only(proposal: Proposal) -> bool:
    return training_of(proposal) is None


def test_what_a_proposal_trains():
    assert decodes_only(DECODE) and not decodes_only(TRAIN) and not decodes_only(COMPANION) and not decodes_only(OTHER)
    assert training_of(TRAIN) == training_of(COMPANION) != training_of(OTHER)  # a companion trains its proposal's


def test_the_plan_schedules_as_the_pool_does():
    # Two workers: the training first; the decoder beside it; the companion waits for the policy (28 s).
    assert makespan([(None, 7.0), ("A", 7.0), ("A", 7.0)], 2, 28.0) == 35.0
    # One worker runs them one after another: the companion after its training, the decoder last.
    assert makespan([(None, 7.0), ("A", 7.0), ("A", 7.0)], 1, 28.0) == 49.0
    # Two trainings on two workers at once, a decoder after the first that ends.
    assert makespan([("A", 7.0), ("B", 7.0), (None, 7.0)], 2, 28.0) == 42.0
    # A worker with nothing it may begin waits for the policy, then scores.
    assert makespan([("A", 7.0), ("A", 7.0), ("A", 7.0)], 3, 28.0) == 35.0


def test_fills_take_the_idle_worker_and_never_lengthen_the_plan():
    plan = dict(workers=2, train_s=28.0, score_s=7.0)
    # A training with its companion and a decoder: the other worker idles 28 - 7 s; two fills of
    # 7 x 1.15 s fit before the companion may begin, a third would not.
    assert fill_count([DECODE, TRAIN, COMPANION], most=9, **plan) == 2
    assert fill_count([DECODE, TRAIN, COMPANION], most=1, **plan) == 1
    assert fill_count([DECODE, TRAIN], most=9, **plan) == 3
    # Nothing trains, two trainings on two workers, one worker, no room asked for: none.
    assert fill_count([DECODE, DECODE], most=9, **plan) == 0
    assert fill_count([TRAIN, OTHER], most=9, **plan) == 0
    assert fill_count([DECODE, TRAIN], most=9, workers=1, train_s=28.0, score_s=7.0) == 0
    assert fill_count([DECODE, TRAIN], most=0, **plan) == 0
    # Training no longer than a scoring leaves no idle time to fill.
    assert fill_count([DECODE, TRAIN], most=9, workers=2, train_s=5.0, score_s=7.0) == 0


def write_result(folder: Path, *, seeds: list[int], eval_s: float, train_s: float | None, status: str = "ok"):
    folder.mkdir(parents=True, exist_ok=True)
    training = {"cached": True} if train_s is None else {"cached": False, "timings": {"train_total_s": train_s}}
    (folder / "result.json").write_text(json.dumps({"status": status, "seeds": seeds, "training": training,
                                                    "timings": {"eval_s": eval_s}}))


def test_the_plan_s_seconds_are_the_medians_of_the_campaign_s_recent_runs(tmp_path):
    rounds = tmp_path / "rounds"
    assert recent_seconds(rounds, round_no=1, seeds=3) is None  # no run yet
    write_result(rounds / "000", seeds=[0, 1, 2, 3, 4, 5], eval_s=12.0, train_s=26.0)  # the baseline
    assert recent_seconds(rounds, round_no=1, seeds=3) == (26.0, 6.0)
    write_result(rounds / "001" / "cand-1", seeds=[0, 1, 2], eval_s=9.0, train_s=30.0)
    write_result(rounds / "001" / "cand-2", seeds=[0, 1, 2], eval_s=6.0, train_s=None)  # decoded a cached policy
    write_result(rounds / "001" / "cand-3", seeds=[0, 1, 2], eval_s=600.0, train_s=900.0, status="failed")
    assert recent_seconds(rounds, round_no=2, seeds=3) == (28.0, 6.0)  # medians of (26, 30) and (2, 3, 2) x 3
    for n in (2, 3, 4):
        write_result(rounds / f"{n:03d}", seeds=[0, 1, 2], eval_s=3.0, train_s=40.0)
    # Round 5 looks back at rounds 2-4 and the baseline only.
    assert recent_seconds(rounds, round_no=5, seeds=3) == (40.0, 3.0)
    (rounds / "004" / "result.json").write_text("{not json")  # a half-written file counts as no run
    assert recent_seconds(rounds, round_no=5, seeds=3) == (40.0, 3.0)


@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def evidence(round_no: int) -> Evidence:
    return Evidence(round=round_no, incumbent_accuracy=0.41, incumbent_ci95=(0.35, 0.47),
                    incumbent_metrics={"format_valid_rate": 0.9, "truncation_rate": 0.05},
                    knobs={"sampling.temperature": 1.0}, failures={}, trend=[0.40, 0.41])


def test_random_fills_are_distinct_sampling_edits_of_their_own_stream(tmp_path, scaffold):
    make = lambda: make_researcher({"name": "random"}, campaign_dir=tmp_path, seed=3, base_model="")
    researcher = make()
    proposals = researcher.propose_many(evidence(4), "", scaffold, 2)
    fills = researcher.propose_fills(evidence(4), "", scaffold, 5, proposals)
    assert len(fills) == 5
    assert all(decodes_only(f) and f.hypothesis.endswith(FILL_NOTE) for f in fills)
    edits = [json.dumps(p.to_dict()["edits"]) for p in proposals + fills]
    assert len(set(edits)) == len(edits)
    for fill in fills:
        validate(fill, scaffold)
    assert make().propose_fills(evidence(4), "", scaffold, 5, proposals) == fills  # (seed, round) decides
    assert make().propose_many(evidence(4), "", scaffold, 2) == proposals  # fills drew from another stream
    assert researcher.propose_fills(evidence(4), "", scaffold, 0, proposals) == []


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the micro model gains nothing from threads on shared cores
    path = tmp_path_factory.mktemp("base")
    tokenizer = build_tokenizer([(ARITH / "surface.yaml").read_text(), (ARITH / "scaffold.yaml").read_text()])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, path)
    yield str(path)
    torch.set_num_threads(threads)


def test_local_fills_are_drawn_from_its_scores_and_learned_from_like_the_round_s_own(tmp_path, scaffold, base_model):
    make = lambda: make_researcher({"name": "local", "context_tokens": 256, "companions": False},
                                   campaign_dir=tmp_path / "campaign", seed=7, base_model=base_model)
    researcher = make()
    proposals = researcher.propose_many(evidence(1), "memory", scaffold, 2)
    fills = researcher.propose_fills(evidence(1), "memory", scaffold, 3, proposals)
    assert len(fills) == 3 and all(decodes_only(f) and f.hypothesis.endswith(FILL_NOTE) for f in fills)
    assert all(len(f.edits) == 1 for f in fills)
    edits = [json.dumps(p.to_dict()["edits"]) for p in proposals + fills]
    assert len(set(edits)) == len(edits)
    pending = json.loads(researcher.pending_file.read_text())
    assert [p["proposal"] for p in pending["picks"]] == [p.to_dict() for p in proposals + fills]

    again = make()  # the same checkpoint draws the same round, proposals and fills
    assert again.propose_many(evidence(1), "memory", scaffold, 2) == proposals
    assert again.propose_fills(evidence(1), "memory", scaffold, 3, proposals) == fills

    weights = researcher.policy.lm_head.weight.detach().clone()
    for proposal, delta in zip(proposals + fills, (0.0, 0.01, 0.03, -0.02, 0.0)):
        researcher.learn(proposal, {"decision": "revert", "delta": delta, "ci95": [delta - 0.01, delta + 0.01]})
    assert not torch.equal(weights, researcher.policy.lm_head.weight)
    assert researcher.state["learned_in_round"] == [0, 1, 2, 3, 4]
    assert [o["delta"] for o in researcher.state["observations"]] == [0.0, 0.01, 0.03, -0.02, 0.0]
    assert [o["knob"] for o in researcher.state["observations"][2:]] == [f.edits[0].knob for f in fills]
    # Fills for another round than the pending one are refused: they are drawn after its proposals.
    with pytest.raises(ValueError, match="not round 2's"):
        researcher.propose_fills(evidence(2), "memory", scaffold, 1, proposals)
