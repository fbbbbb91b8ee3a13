"""Researcher backends: scripted replay, the random baseline, and the local model under its grammar."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.analyze import Evidence
from harness.proposal import KnobEdit, MoveEdit, Proposal, ProposalError, available_moves, render, validate
from harness.researchers import ResearcherExhausted, make_researcher
from harness.researchers.base import decoder_companions, knob_space
from harness.researchers.context import evidence_context
from harness.researchers.local import build_trie, candidate_text, credit_edit, edit_text, interior_first, value_grid
from harness.researchers.random_search import draw_value
from fast_scaffold import TEST_PRESET
from model import build_policy, build_tokenizer, save_policy
from rl_pipeline.scaffold import load_scaffold

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
MEMORY = "# Memory\n\n## Round 1\nset sampling.temperature from 1.0 to 0.7: reverted\n" * 20


@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.fixture
def strict_scaffold(scaffold):
    """arith with a batch size of 12 allowed by its range but refused by the cross-knob rule (a
    multiple of grpo.num_generations, 8 here): a valid-looking edit that only the scaffold rejects."""
    surface = scaffold / "surface.yaml"
    surface.write_text(surface.read_text().replace("choices: [8, 16]", "choices: [8, 12, 16]"))
    return scaffold


def evidence(round_no: int) -> Evidence:
    return Evidence(round=round_no, incumbent_accuracy=0.41, incumbent_ci95=(0.35, 0.47),
                    incumbent_metrics={"format_valid_rate": 0.9, "truncation_rate": 0.05},
                    knobs={"sampling.temperature": 1.0},
                    failures={"wrong_answer": {"count": 12, "examples": [
                        {"question": "2+2", "completion": "5", "expected": "4"}]}},
                    trend=[0.40, 0.41])


def test_unknown_researcher_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown researcher 'gpt'.*scripted, random, local"):
        make_researcher({"name": "gpt"}, campaign_dir=tmp_path, seed=0, base_model="none")


# ---------------------------------------------------------------- scripted

def scripted(tmp_path, lines):
    path = tmp_path / "proposals.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return make_researcher({"name": "scripted", "file": str(path)}, campaign_dir=tmp_path, seed=0, base_model="")


def test_scripted_replays_lines_by_round_and_skips_blank_lines(tmp_path, scaffold):
    first = {"hypothesis": "cooler", "edits": [{"knob": "sampling.temperature", "value": 0.7}]}
    second = {"hypothesis": "larger batches", "edits": [{"knob": "grpo.per_device_train_batch_size", "value": 16}]}
    researcher = scripted(tmp_path, [json.dumps(first), "", "   ", json.dumps(second)])
    assert researcher.propose(evidence(2), "", scaffold).to_dict() == second
    assert researcher.propose(evidence(1), "", scaffold).to_dict() == first  # stateless: any order
    with pytest.raises(ResearcherExhausted, match="round 3"):
        researcher.propose(evidence(3), "", scaffold)


def test_scripted_malformed_line_names_the_line(tmp_path, scaffold):
    good = json.dumps({"hypothesis": "h", "edits": [{"knob": "grpo.beta", "value": 0.1}]})
    researcher = scripted(tmp_path, [good, "", '{"hypothesis": "h", "edits": []}', "{not json"])
    assert researcher.propose(evidence(1), "", scaffold).edits == (KnobEdit("grpo.beta", 0.1),)
    with pytest.raises(ProposalError, match=r"proposals.jsonl, line 3: 'edits' is empty"):
        researcher.propose(evidence(2), "", scaffold)
    with pytest.raises(ProposalError, match=r"line 4: proposal is not valid JSON"):
        researcher.propose(evidence(3), "", scaffold)


# ---------------------------------------------------------------- random

def test_random_is_valid_reproducible_and_never_a_no_op(tmp_path, scaffold):
    specs, current = knob_space(scaffold)
    make = lambda seed: make_researcher({"name": "random"}, campaign_dir=tmp_path, seed=seed, base_model="")
    researcher, again, other = make(3), make(3), make(4)
    proposals = [researcher.propose(evidence(n), "", scaffold) for n in range(1, 51)]
    moves = available_moves(scaffold)
    for proposal in proposals:
        validate(proposal, scaffold)
        (edit,) = proposal.edits
        if isinstance(edit, MoveEdit):
            assert edit.move in moves and f"apply move {edit.move}: " in proposal.hypothesis
            continue
        assert edit.value != current[edit.knob]
        assert type(edit.value) is {"float": float, "int": int, "str": str}[specs[edit.knob]["type"]]
    knobs = [p.edits[0].knob for p in proposals if isinstance(p.edits[0], KnobEdit)]
    drawn_moves = [p.edits[0].move for p in proposals if isinstance(p.edits[0], MoveEdit)]
    assert len(set(knobs)) >= 10  # the knob is drawn over the whole surface
    assert 3 <= len(drawn_moves) <= 20 and len(set(drawn_moves)) >= 3  # 7 of 26 choices are moves
    assert [again.propose(evidence(n), "", scaffold) for n in range(50, 0, -1)] == proposals[::-1]
    assert [other.propose(evidence(n), "", scaffold) for n in range(1, 11)] != proposals[:10]


def test_random_respects_cross_knob_rules(tmp_path, strict_scaffold):
    researcher = make_researcher({"name": "random"}, campaign_dir=tmp_path, seed=0, base_model="")
    batch = [p.edits[0].value for p in (researcher.propose(evidence(n), "", strict_scaffold) for n in range(1, 241))
             if getattr(p.edits[0], "knob", None) == "grpo.per_device_train_batch_size"]
    assert batch and set(batch) == {16}


def test_random_draws_only_the_moves_that_apply_now(tmp_path, scaffold):
    applied = render(Proposal("h", (MoveEdit("prompt_one_shot"), MoveEdit("reward_partial_credit"))), scaffold)
    for rel, text in applied.items():
        (scaffold / rel).write_text(text)
    researcher = make_researcher({"name": "random"}, campaign_dir=tmp_path, seed=0, base_model="")
    drawn = {p.edits[0].move for p in (researcher.propose(evidence(n), "", scaffold) for n in range(1, 81))
             if isinstance(p.edits[0], MoveEdit)}
    assert drawn == {"reward_near_miss_credit", "reward_malformed_penalty", "data_worded_forms", "data_bare_form"}


def test_random_values_follow_the_knob_scale():
    rng = np.random.default_rng(0)
    lr = [draw_value(rng, {"type": "float", "min": 1e-7, "max": 1e-3, "log": True}) for _ in range(200)]
    assert 1e-7 <= min(lr) and max(lr) <= 1e-3
    assert np.median(lr) < 1e-4  # log-uniform: half the draws below 1e-5; uniform would put it near 5e-4
    steps = {draw_value(rng, {"type": "int", "min": 1, "max": 4}) for _ in range(100)}
    assert steps == {1, 2, 3, 4}
    assert {draw_value(rng, {"type": "str", "choices": ["a", "b"]}) for _ in range(50)} == {"a", "b"}


# ---------------------------------------------------------------- local

@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A micro fresh policy whose tokenizer has seen the surface, saved as the campaign's base."""
    threads = torch.get_num_threads()
    # The tiny model's matmuls gain nothing from threads, and on shared cores they slow it a hundredfold.
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base")
    tokenizer = build_tokenizer([(ARITH / "surface.yaml").read_text(), (ARITH / "scaffold.yaml").read_text()])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, path)
    yield str(path)
    torch.set_num_threads(threads)


def local(campaign_dir, base_model, **config):
    """The local researcher, one candidate per draw (decoder companions are tested on their own)."""
    return make_researcher({"name": "local", "context_tokens": 256, "companions": False} | config,
                           campaign_dir=campaign_dir, seed=7, base_model=base_model)


def test_local_rejects_unknown_options(tmp_path, base_model):
    with pytest.raises(ValueError) as err:
        local(tmp_path, base_model, lr=1e-3)
    assert str(err.value) == ("researcher.lr: unknown key; valid keys of researcher (local): name, temperature, "
                              "learning_rate, grid_points, context_tokens, reward_scale, credit_weight, evidence, stack, "
                              "companions, interior_first")
    with pytest.raises(ValueError, match="credit_weight must be >= 0"):
        local(tmp_path, base_model, credit_weight=-1)
    with pytest.raises(ValueError, match=r"researcher.temperature must be > 0(\.0)?, got 0$"):
        local(tmp_path, base_model, temperature=0)


def test_value_grid_spans_the_range_without_the_current_value():
    assert value_grid({"type": "float", "min": 0.0, "max": 2.0}, 1.0, 7) == [0.0, 0.333, 0.667, 1.33, 1.67, 2.0]
    assert value_grid({"type": "float", "min": 1e-7, "max": 1e-3, "log": True}, 1e-6, 5) == [
        1e-7, 1e-5, 1e-4, 1e-3]
    assert value_grid({"type": "int", "min": 1, "max": 4}, 2, 7) == [1, 3, 4]
    assert value_grid({"type": "str", "choices": ["a", "b"]}, "a", 7) == ["b"]


def test_local_proposals_are_all_valid_and_deterministic(tmp_path, strict_scaffold, base_model):
    scaffold = strict_scaffold
    researcher = local(tmp_path / "campaign", base_model)
    proposals = [researcher.propose(evidence(n), MEMORY, scaffold) for n in range(1, 21)]
    candidates = json.loads((tmp_path / "campaign" / "researcher" / "pending.json").read_text())["candidates"]
    assert '{"knob": "grpo.per_device_train_batch_size", "value": 16}' in candidates
    assert '{"knob": "grpo.per_device_train_batch_size", "value": 12}' not in candidates
    assert '{"move": "reward_partial_credit"}' in candidates  # the scaffold's moves are in the grammar
    for proposal in proposals:
        validate(proposal, scaffold)
        (edit,) = proposal.edits
        assert proposal.hypothesis.startswith(f"apply move {edit.move}: " if isinstance(edit, MoveEdit) else
                                              f"set {edit.knob} from ")
        assert "wrong_answer" in proposal.hypothesis
    assert len({p.edits for p in proposals}) > 5  # it samples, it does not repeat one edit
    assert researcher.propose(evidence(4), MEMORY, scaffold) == proposals[3]
    assert researcher.usage()["generated_tokens"] > 0
    assert (tmp_path / "campaign" / "researcher" / "checkpoint" / "config.json").is_file()


def test_the_grammar_is_scored_whole_and_batching_changes_no_probability(tmp_path, scaffold, base_model):
    researcher = local(tmp_path / "campaign", base_model)
    researcher.propose(evidence(1), MEMORY, scaffold)
    pending = json.loads((tmp_path / "campaign" / "researcher" / "pending.json").read_text())
    trie = build_trie(pending["sequences"])
    batched = researcher._candidate_logprobs(pending["prompt_ids"], pending["sequences"], trie)
    with torch.no_grad():
        one_by_one = [float(researcher._sequence_logprob(pending["prompt_ids"], seq, trie))
                      for seq in pending["sequences"]]
    assert np.allclose(batched, one_by_one, atol=1e-4)
    assert np.exp(batched).sum() == pytest.approx(1.0, abs=1e-4)  # a distribution over every valid edit


def steer(campaign_dir, scaffold, base_model, rounds, **config):
    """Propose and learn for `rounds` rounds where only lowering sampling.top_p helps (0.3 per unit,
    an interval of +/-0.01); nothing is kept, so the incumbent stays at top_p 1.0."""
    researcher = local(campaign_dir, base_model, **config)
    edits = []
    for n in range(1, rounds + 1):
        edit = researcher.propose(evidence(n), MEMORY, scaffold).edits[0]
        delta = 0.3 * (1.0 - edit.value) if getattr(edit, "knob", None) == "sampling.top_p" else 0.0
        researcher.learn(Proposal("", (edit,)), {"decision": "revert", "delta": delta,
                                                 "ci95": [delta - 0.01, delta + 0.01]})
        edits.append(edit)
    return researcher, edits


def test_value_level_credit_turns_one_good_outcome_into_more(tmp_path, scaffold, base_model):
    # stack=0: every round one edit, so the two runs differ by the credit model alone
    guided, edits = steer(tmp_path / "guided", scaffold, base_model, 24, stack=0)
    _, alone = steer(tmp_path / "alone", scaffold, base_model, 24, credit_weight=0, stack=0)
    knobs = [credit_edit(e)[0] for e in edits]
    first = knobs.index("sampling.top_p")
    # Once top_p has shown an effect, most of its other grid values get tried; without credit, a knob
    # out of 19 comes up about one round in 19.
    assert knobs[first + 1:].count("sampling.top_p") >= 3
    assert sum(credit_edit(e)[0] == "sampling.top_p" for e in alone) <= 2
    assert len(guided.state["observations"]) == 24
    (incumbent,) = guided.state["tried"]  # nothing was kept: every observation is against one incumbent
    assert guided.state["observations"][first] == {"knob": "sampling.top_p", "from": 1.0, "to": edits[first].value,
                                                   "delta": pytest.approx(0.3 * (1 - edits[first].value)),
                                                   "ci95": pytest.approx([0.3 * (1 - edits[first].value) - 0.01,
                                                                          0.3 * (1 - edits[first].value) + 0.01]),
                                                   "context": evidence_context(evidence(first + 1)),
                                                   "text": edit_text(edits[first]), "round": first + 1,
                                                   "decision": "revert", "state": incumbent}
    proposal = guided.propose(evidence(25), MEMORY, scaffold)
    seen = sum(o["knob"] == credit_edit(proposal.edits[0])[0] for o in guided.state["observations"])
    assert (f"the credit model, from {seen} earlier round" in proposal.hypothesis) == (seen > 0)


def test_learn_raises_the_rewarded_proposal_and_save_writes_it(tmp_path, scaffold, base_model):
    researcher = local(tmp_path / "campaign", base_model, learning_rate=1e-3)
    proposal = researcher.propose(evidence(1), MEMORY, scaffold)
    before = researcher.log_prob(proposal)
    weights = researcher.policy.lm_head.weight.detach().clone()
    state_file = tmp_path / "campaign" / "researcher" / "checkpoint" / "state.json"
    on_disk = state_file.read_text()
    researcher.learn(proposal, {"decision": "keep", "delta": 0.05})
    assert not torch.equal(weights, researcher.policy.lm_head.weight)
    assert researcher.log_prob(proposal) > before + 0.01
    assert state_file.read_text() == on_disk  # learning writes nothing: the campaign saves once a round
    researcher.save(researcher.dir)
    state = json.loads(state_file.read_text())
    assert state["tried"] == {json.loads((tmp_path / "campaign" / "researcher" / "pending.json").read_text())[
        "state"]: [edit_text(proposal.edits[0])]}
    assert {k: state[k] for k in ("baseline", "rounds_learned", "last_learned_round")} == {
        "baseline": 1.0, "rounds_learned": 1, "last_learned_round": 1}

    # A resumed campaign may hand the same round's verdict again: it is learned once.
    weights = researcher.policy.lm_head.weight.detach().clone()
    researcher.learn(proposal, {"decision": "keep", "delta": 0.05})
    assert torch.equal(weights, researcher.policy.lm_head.weight)

    # A punished proposal (a failed run) becomes less likely.
    proposal = researcher.propose(evidence(2), MEMORY, scaffold)
    before = researcher.log_prob(proposal)
    researcher.learn(proposal, {"decision": "revert", "delta": None})
    assert researcher.log_prob(proposal) < before


def test_local_proposes_k_distinct_edits_and_learns_each_once(tmp_path, scaffold, base_model):
    # interior_first=False: every grid value on offer from the start, so a tried edit is all that leaves
    researcher = local(tmp_path / "campaign", base_model, interior_first=False)
    proposals = researcher.propose_many(evidence(1), MEMORY, scaffold, 3)
    assert len({json.dumps(p.to_dict()["edits"]) for p in proposals}) == 3  # drawn without replacement
    for proposal in proposals:
        validate(proposal, scaffold)
    assert researcher.propose_many(evidence(1), MEMORY, scaffold, 3) == proposals  # the round's seed decides

    for proposal, delta in zip(proposals, (0.02, -0.01, 0.0)):
        researcher.learn(proposal, {"decision": "revert", "delta": delta, "ci95": [delta - 0.01, delta + 0.01]})
    researcher.save(researcher.dir)
    state = json.loads((tmp_path / "campaign" / "researcher" / "checkpoint" / "state.json").read_text())
    assert state["rounds_learned"] == 3 and state["learned_in_round"] == [0, 1, 2]
    assert [o["delta"] for o in state["observations"]] == [0.02, -0.01, 0.0]
    assert sorted(next(iter(state["tried"].values()))) == sorted(edit_text(p.edits[0]) for p in proposals)

    # A resume hands the round's verdicts again: each candidate is learned once.
    weights = researcher.policy.lm_head.weight.detach().clone()
    for proposal in proposals:
        researcher.learn(proposal, {"decision": "revert", "delta": 0.5})
    assert torch.equal(weights, researcher.policy.lm_head.weight) and researcher.state["rounds_learned"] == 3
    # The next round's proposals leave out the three tried against the same incumbent.
    offered = json.loads(researcher.pending_file.read_text())["candidates"]
    researcher.propose_many(evidence(2), MEMORY, scaffold, 2)
    assert len(json.loads(researcher.pending_file.read_text())["candidates"]) == len(offered) - 3


def test_a_change_to_training_comes_with_a_companion_under_each_decoder(tmp_path, scaffold, base_model):
    """Every drawn proposal that changes training is followed by its companion (the same edits plus
    the scaffold's decoder, greedy); a proposal that only decodes, or already sets a sampling knob,
    has none, and none is offered once the incumbent decodes greedily. The companion's verdict is
    recorded as the proposal's edits plus the decoder's."""
    greedy = KnobEdit("sampling.temperature", 0.0)
    loaded = load_scaffold(scaffold, import_code=False)
    move = MoveEdit("reward_partial_credit")
    assert [c.edits for c in decoder_companions(Proposal("m", (move,)), loaded)] == [(move, greedy)]
    assert decoder_companions(Proposal("s", (KnobEdit("sampling.top_p", 0.5),)), loaded) == []
    assert decoder_companions(Proposal("both", (KnobEdit("grpo.beta", 0.1), KnobEdit("sampling.top_p", 0.5))),
                              loaded) == []

    researcher = local(tmp_path / "campaign", base_model, companions=True)
    proposals = researcher.propose_many(evidence(1), MEMORY, scaffold, 4)
    drawn, companions = proposals[:4], proposals[4:]
    training = [p for p in drawn if any(not isinstance(e, KnobEdit) or not e.knob.startswith("sampling.")
                                        for e in p.edits)]
    assert training and [c.edits for c in companions] == [(*p.edits, greedy) for p in training]
    assert all(c.hypothesis.endswith("(a companion)") for c in companions)
    for proposal in proposals:
        validate(proposal, scaffold)

    researcher.learn(companions[0], {"decision": "keep", "delta": 0.08, "ci95": [0.04, 0.12]})
    researcher.save(researcher.dir)
    (observation,) = json.loads((tmp_path / "campaign" / "researcher" / "checkpoint" / "state.json").read_text()
                                )["observations"]
    (edit,) = training[0].edits
    knob, value = credit_edit(edit)
    assert (observation["knob"], observation["from"], observation["to"]) == ("sampling.temperature", 1.0, 0.0)
    assert observation["text"] == edit_text(greedy) and observation["delta"] == 0.08
    assert [(o["knob"], o["to"], o["text"]) for o in observation["stacked"]] == [(knob, value, edit_text(edit))]

    (scaffold / "scaffold.yaml").write_text((scaffold / "scaffold.yaml").read_text().replace(
        "temperature: 1.0", "temperature: 0.0", 1))
    assert decoder_companions(Proposal("m", (move,)), load_scaffold(scaffold, import_code=False)) == []
    assert len(researcher.propose_many(evidence(2), MEMORY, scaffold, 4)) == 4


def test_local_never_repeats_a_tried_edit_until_the_grid_is_used_up(tmp_path, scaffold, base_model):
    surface = scaffold / "surface.yaml"  # one searchable knob, with three values other than the current one
    lines = [re.sub(r"\{type: (\w+),.*\}", r"{type: \1}", line) if "loss_type" not in line else line
             for line in surface.read_text().splitlines()]
    surface.write_text("\n".join(lines) + "\n")
    (scaffold / "moves.yaml").unlink()  # the knob's grid alone
    researcher = local(tmp_path / "campaign", base_model)

    def offered():  # how many edits the last proposal chose among
        return len(json.loads(researcher.pending_file.read_text())["candidates"])

    values, choices = [], []
    for n in range(1, 4):
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        choices.append(offered())
        researcher.learn(proposal, {"decision": "revert", "delta": 0.0})
        values.append(proposal.edits[0].value)
    assert sorted(values) == ["bnpo", "dr_grpo", "grpo"]  # every choice but the current dapo
    assert choices == [3, 2, 1]  # each tried edit is left out of the next choice
    assert researcher.propose(evidence(4), MEMORY, scaffold).edits[0].value in values
    assert offered() == 3  # all tried: the whole grid is open again
    researcher.save(researcher.dir)
    reloaded = local(tmp_path / "campaign", base_model)  # the tried edits are part of the checkpoint
    assert len(next(iter(reloaded.state["tried"].values()))) == 3


def test_a_knob_is_first_tried_inside_its_range_then_at_its_ends(tmp_path, scaffold, base_model):
    def offered(researcher):
        return set(json.loads(researcher.pending_file.read_text())["candidates"])

    ends = {candidate_text("sampling.top_p", 0.05), candidate_text("grpo.learning_rate", 2e-4)}
    researcher = local(tmp_path / "campaign", base_model, stack=0)
    researcher.propose(evidence(1), MEMORY, scaffold)
    first = offered(researcher)
    assert not ends & first
    assert {candidate_text("sampling.top_p", 0.208), candidate_text("grpo.learning_rate", 8.27e-5),
            candidate_text("grpo.loss_type", "dr_grpo")} <= first  # the middle, and every choice
    # a knob whose only values on offer are ends keeps them: it could never be tried otherwise
    assert interior_first([("a", KnobEdit("grpo.max_completion_length", 4))],
                          {"grpo.max_completion_length": {"type": "int", "min": 4, "max": 8}}, []) == [
        ("a", KnobEdit("grpo.max_completion_length", 4))]
    specs, current = knob_space(scaffold)
    for n in range(2, 40):  # learn until a numeric knob has been tried: then its ends are on offer
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        researcher.learn(proposal, {"decision": "revert", "delta": 0.0, "ci95": [-0.01, 0.01]})
        edit = proposal.edits[0]
        if isinstance(edit, KnobEdit) and "choices" not in specs[edit.knob]:
            break
    spec = specs[edit.knob]
    assert edit.value not in (spec["min"], spec["max"])
    researcher.propose(evidence(n + 1), MEMORY, scaffold)
    assert {candidate_text(edit.knob, end) for end in (spec["min"], spec["max"])
            if end != current[edit.knob]} <= offered(researcher)
    everywhere = local(tmp_path / "everywhere", base_model, interior_first=False)
    everywhere.propose(evidence(1), MEMORY, scaffold)
    assert ends <= offered(everywhere)


def test_checkpoint_reloads_to_identical_proposals(tmp_path, scaffold, base_model):
    campaign = tmp_path / "campaign"
    researcher = local(campaign, base_model, learning_rate=1e-3)
    proposal = researcher.propose(evidence(1), MEMORY, scaffold)
    researcher.learn(proposal, {"decision": "revert", "delta": -0.02})
    researcher.save(campaign / "researcher")
    expected = [researcher.propose(evidence(n), MEMORY, scaffold) for n in (2, 3, 4)]

    reloaded = local(campaign, base_model, learning_rate=1e-3)  # picks up campaign/researcher/checkpoint
    assert reloaded.state["rounds_learned"] == 1
    assert [reloaded.propose(evidence(n), MEMORY, scaffold) for n in (2, 3, 4)] == expected

    researcher.save(tmp_path / "copy")
    fresh = local(tmp_path / "other", base_model)
    fresh.load(tmp_path / "copy")
    assert torch.equal(fresh.policy.lm_head.weight, researcher.policy.lm_head.weight)
    assert fresh.state == researcher.state


def one_knob_and_the_moves(scaffold: Path) -> Path:
    """arith with one searchable knob (grpo.loss_type: three values besides the current one) and its
    seven moves: ten candidates, each tried once against an incumbent before any repeats."""
    surface = scaffold / "surface.yaml"
    lines = [re.sub(r"\{type: (\w+),.*\}", r"{type: \1}", line) if "loss_type" not in line else line
             for line in surface.read_text().splitlines()]
    surface.write_text("\n".join(lines) + "\n")
    return scaffold


def incumbent_evidence(round_no: int, malformed: bool) -> Evidence:
    """An incumbent whose failures are mostly malformed answers (format_valid_rate 0.3), or mostly
    well-formed wrong ones (0.98); no near misses either way, so no move's declared target tells
    them apart except the format ones."""
    failures = {"bad_format": 60, "wrong_answer": 10} if malformed else {"wrong_answer": 60, "bad_format": 1}
    return Evidence(round=round_no, incumbent_accuracy=0.3, incumbent_ci95=(0.25, 0.35),
                    incumbent_metrics={"format_valid_rate": 0.3 if malformed else 0.98, "truncation_rate": 0.0},
                    knobs={}, failures={c: {"count": n, "examples": []} for c, n in failures.items()})


def test_the_evidence_steers_the_local_researcher_and_blanking_it_does_not(tmp_path, scaffold, base_model):
    """The near-miss move pays +0.08 where answers are malformed and costs 0.04 where they are not
    (outcomes against its declared target, so only they can teach it). Each incumbent gets every
    candidate once: ten rounds on a malformed incumbent, a keep, ten on a tidy one. Then, over
    the same rounds and seeds, the researcher that sees the evidence proposes the move on a malformed
    incumbent and avoids it on a tidy one; blanked, it cannot tell them apart."""
    scaffold = one_knob_and_the_moves(scaffold)
    move = MoveEdit("reward_near_miss_credit")
    config = scaffold / "scaffold.yaml"
    original = config.read_text()

    def trained(name, **options):
        config.write_text(original)
        researcher = local(tmp_path / name, base_model, **options)
        for n in range(1, 21):
            if n == 11:  # a keep: another incumbent, whose failures are well-formed
                config.write_text(original.replace("loss_type: dapo", "loss_type: grpo"))
            malformed = n <= 10
            proposal = researcher.propose(incumbent_evidence(n, malformed), MEMORY, scaffold)
            delta = (0.08 if malformed else -0.04) if proposal.edits[0] == move else 0.0
            researcher.learn(proposal, {"decision": "revert", "delta": delta, "ci95": [delta - 0.01, delta + 0.01]})
        return researcher

    def proposed(researcher, malformed):
        return [researcher.propose(incumbent_evidence(n, malformed), MEMORY, scaffold).edits[0]
                for n in range(21, 41)]

    seeing, blind = trained("seeing", stack=0), trained("blind", evidence=False, stack=0)  # one edit a round
    assert [o["context"]["format_failure"] for o in seeing.state["observations"]] == [
        pytest.approx(0.7)] * 10 + [pytest.approx(0.02)] * 10
    assert all(set(o["context"].values()) == {0.0} for o in blind.state["observations"])
    on_malformed, on_tidy = proposed(seeing, True), proposed(seeing, False)
    blind_malformed, blind_tidy = proposed(blind, True), proposed(blind, False)
    assert blind_malformed == blind_tidy  # without the evidence the two incumbents look the same
    assert on_malformed.count(move) >= 12 and on_tidy.count(move) <= 2  # of 20 rounds each (13 and 0 here)
    assert on_tidy.count(move) <= blind_tidy.count(move) < on_malformed.count(move)
    hypothesis = blind.propose(incumbent_evidence(41, True), MEMORY, scaffold).hypothesis
    assert "without the evidence" in hypothesis and "bad_format" not in hypothesis


def test_reward_moves_tried_where_training_moved_nothing_are_tried_again_once_it_moves(tmp_path, scaffold,
                                                                                       base_model):
    """Eight rounds on an incumbent whose training left the policy as it was (weight change 1e-4):
    every candidate once, each scoring 0, as every edit does there. Then a kept change whose
    training moves the policy (6e-3). The researcher that reads the drift has learned nothing of
    the three reward moves from those zeros and proposes them as before they were tried; where the
    results do not say how far training went, the same zeros wrote them off."""
    scaffold = one_knob_and_the_moves(scaffold)
    config = scaffold / "scaffold.yaml"
    original = config.read_text()
    reward_moves = {MoveEdit(name) for name, move in load_scaffold(scaffold, import_code=False).moves.items()
                    if move.shapes_reward}

    def at(round_no, weight_change):
        return Evidence(**incumbent_evidence(round_no, True).to_dict() | {"weight_change": weight_change})

    def reward_moves_after_the_rate(name, measured):
        config.write_text(original)
        researcher = local(tmp_path / name, base_model, stack=0)
        for n in range(1, 9):
            proposal = researcher.propose(at(n, 1e-4 if measured else None), MEMORY, scaffold)
            researcher.learn(proposal, {"decision": "revert", "delta": 0.0, "ci95": [-0.004, 0.004]})
        config.write_text(original.replace("loss_type: dapo", "loss_type: grpo"))  # the kept rate
        return [researcher.propose(at(n, 6e-3 if measured else None), MEMORY, scaffold).edits[0] in reward_moves
                for n in range(9, 49)].count(True)

    seeing, unmeasured = reward_moves_after_the_rate("drift", True), reward_moves_after_the_rate("none", False)
    assert seeing >= 20 and seeing >= 2 * unmeasured, (seeing, unmeasured)  # of 40 rounds (37 and 12 here)


def test_local_proposes_every_move_and_credits_it_as_a_choice(tmp_path, scaffold, base_model):
    """One searchable knob (three values) and the seven arith moves: ten candidates, each tried once
    before any repeats, so every move is proposed within ten rounds; a kept move leaves the grammar."""
    surface = scaffold / "surface.yaml"
    lines = [re.sub(r"\{type: (\w+),.*\}", r"{type: \1}", line) if "loss_type" not in line else line
             for line in surface.read_text().splitlines()]
    surface.write_text("\n".join(lines) + "\n")
    researcher = local(tmp_path / "campaign", base_model, stack=0)  # one edit a round: each candidate once
    proposals = []
    for n in range(1, 11):
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        validate(proposal, scaffold)
        delta = 0.04 if proposal.edits[0] == MoveEdit("reward_near_miss_credit") else 0.0
        researcher.learn(proposal, {"decision": "revert", "delta": delta, "ci95": [delta - 0.01, delta + 0.01]})
        proposals.append(proposal)
    moves = [p.edits[0].move for p in proposals if isinstance(p.edits[0], MoveEdit)]
    assert sorted(moves) == sorted(available_moves(scaffold)) and len(moves) == 7
    near = next(p for p in proposals if p.edits[0] == MoveEdit("reward_near_miss_credit"))
    assert near.hypothesis.startswith("apply move reward_near_miss_credit: an answer off by a little")
    assert {"knob": "move:reward_near_miss_credit", "from": False, "to": True, "delta": 0.04,
            "ci95": [0.03, 0.05], "context": evidence_context(evidence(1)),
            "text": '{"move": "reward_near_miss_credit"}',
            "round": proposals.index(near) + 1, "decision": "revert",
            "state": next(iter(researcher.state["tried"]))} in researcher.state["observations"]
    # the credit model now expects the near-miss move to help, and says so when it proposes it again
    again = [p for p in (researcher.propose(evidence(n), MEMORY, scaffold) for n in range(11, 42))
             if p.edits[0] == MoveEdit("reward_near_miss_credit")]
    assert again and "(the credit model, from 1 earlier round on this move, expects +0.0" in again[0].hypothesis

    # keep it: its text is in reward.py now, so the move is no longer a candidate
    for rel, text in render(Proposal("keep", (MoveEdit("reward_near_miss_credit"),)), scaffold).items():
        (scaffold / rel).write_text(text)
    researcher.propose(evidence(42), MEMORY, scaffold)
    candidates = json.loads(researcher.pending_file.read_text())["candidates"]
    assert '{"move": "reward_near_miss_credit"}' not in candidates and '{"move": "reward_partial_credit"}' in candidates
    assert len(candidates) == 9  # and nothing was tried against this incumbent yet


def test_local_stacks_edits_onto_a_near_miss_one_knob_at_a_time(tmp_path, scaffold, base_model):
    """A gain not kept is a near miss; a large one makes most later proposals add one edit to it,
    each on a knob not yet stacked onto it, and a stacked round is learned as the sum of its edits."""
    researcher = local(tmp_path / "campaign", base_model)
    first = researcher.propose(evidence(1), MEMORY, scaffold)
    researcher.learn(first, {"decision": "revert", "delta": 0.2, "ci95": [-0.01, 0.41]})
    (near,) = first.edits
    stacked = []
    for n in range(2, 12):
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        validate(proposal, scaffold)
        researcher.learn(proposal, {"decision": "revert", "delta": 0.0, "ci95": [-0.01, 0.01]})
        if len(proposal.edits) == 2:
            assert proposal.edits[0] == near
            assert proposal.hypothesis.startswith(f"stack onto the near miss {edit_text(near)} (+0.200 in round 1, "
                                                  "not kept): ")
            stacked.append(proposal)
    assert len(stacked) >= 7  # of 10 rounds: the chance is 0.2 / (0.2 + 0.01)
    partners = [credit_edit(p.edits[1])[0] for p in stacked]
    assert len(set(partners)) == len(partners) and credit_edit(near)[0] not in partners  # each knob once
    last = next(o for o in reversed(researcher.state["observations"]) if "stacked" in o)
    assert last["stacked"] == [{"knob": credit_edit(near)[0], "from": researcher.state["observations"][0]["from"],
                                "to": credit_edit(near)[1], "text": edit_text(near)}]
    assert last["text"] == edit_text(stacked[-1].edits[1])
    (tried,) = researcher.state["tried"].values()  # one incumbent: nothing was kept
    assert f"{edit_text(near)} + {edit_text(stacked[-1].edits[1])}" in tried
    assert edit_text(stacked[-1].edits[1]) not in tried  # the edit alone is still untried
    # The next proposal is still one the scaffold accepts, and the credit model fitted the stacked rounds.
    validate(researcher.propose(evidence(12), MEMORY, scaffold), scaffold)
    # A keep of another edit makes a new incumbent: the gain was measured against the old one, so
    # it is no near miss of the new one (at the old chance, five rounds would stack all but surely).
    for rel, text in render(Proposal("keep", (stacked[-1].edits[1],)), scaffold).items():
        (scaffold / rel).write_text(text)
    for n in range(13, 18):
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        assert len(proposal.edits) == 1 and not proposal.hypothesis.startswith("stack")
        researcher.learn(proposal, {"decision": "revert", "delta": -0.01, "ci95": [-0.02, 0.0]})


def test_local_stacks_onto_a_loss_that_cut_a_failure_rate_only_with_the_evidence(tmp_path, scaffold, base_model):
    """A proposal that lost accuracy but cut the well-formed answers' failures well beyond the noise is
    a near miss where the evidence is on: later proposals add edits to it, saying what it cut; with
    the evidence blanked the same verdicts leave every proposal one edit."""
    def stacks(name, **config):
        researcher = local(tmp_path / name, base_model, **config)
        first = researcher.propose(evidence(1), MEMORY, scaffold)
        researcher.learn(first, {"decision": "revert", "delta": -0.0125, "ci95": [-0.024, -0.001],
                                 "metric_deltas": {"accuracy": -0.0125, "format_valid_rate": 0.2,
                                                   "mean_completion_tokens": -0.4}})
        assert researcher.state["observations"][0]["rates"] == {"format_valid_rate": 0.2}
        found = []
        for n in range(2, 8):
            proposal = researcher.propose(evidence(n), MEMORY, scaffold)
            researcher.learn(proposal, {"decision": "revert", "delta": -0.02, "ci95": [-0.03, -0.01]})
            found += [proposal] if len(proposal.edits) > 1 else []
        return first, found

    first, found = stacks("seeing")
    assert len(found) >= 3  # of 6 rounds: the chance is 0.02 / (0.02 + 0.01)
    assert all(p.edits[0] == first.edits[0] for p in found)
    assert found[0].hypothesis.startswith(f"stack onto the near miss {edit_text(first.edits[0])} (-0.013 in round 1, "
                                          "format failure cut by 0.200, not kept): ")
    assert stacks("blind", evidence=False)[1] == []


def test_local_refines_a_stack_that_gained_on_one_of_its_knobs(tmp_path, scaffold, base_model):
    """A stack that gained more than its near miss may have one of its knobs set to another value:
    the proposal keeps the other edit, says what it refines, and is recorded as built on the stack."""
    researcher = local(tmp_path / "campaign", base_model)
    first = researcher.propose(evidence(1), MEMORY, scaffold)
    researcher.learn(first, {"decision": "revert", "delta": 0.2, "ci95": [-0.01, 0.41]})
    n, pair = 2, None
    while pair is None:
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        gained = len(proposal.edits) == 2
        researcher.learn(proposal, {"decision": "revert", "delta": 0.3 if gained else 0.0, "ci95": [0.0, 0.6]})
        pair, n = (proposal if gained else None), n + 1
    pair_texts = [edit_text(e) for e in pair.edits]
    knobs = {credit_edit(e)[0]: e for e in pair.edits}
    refined = []
    for n in range(n, n + 40):
        proposal = researcher.propose(evidence(n), MEMORY, scaffold)
        validate(proposal, scaffold)
        researcher.learn(proposal, {"decision": "revert", "delta": 0.0, "ci95": [-0.01, 0.01]})
        if proposal.hypothesis.startswith("refine the near miss"):
            kept, new = proposal.edits
            knob = credit_edit(new)[0]
            assert knob in knobs and new != knobs[knob] and edit_text(kept) in pair_texts
            assert proposal.hypothesis.startswith(f"refine the near miss {' + '.join(pair_texts)} (+0.300 in round ")
            observation = researcher.state["observations"][-1]
            assert observation["onto"] == pair_texts and observation["stacked"][0]["text"] == edit_text(kept)
            refined.append(edit_text(new))
    assert refined and len(set(refined)) == len(refined)  # each value of the pair's knobs tried at most once
