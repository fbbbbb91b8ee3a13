"""Code moves: declared in a scaffold's moves.yaml, loaded and checked with its surface, proposed as
`{"move": NAME}`, expanded into file edits and applied under git exactly like one."""

import copy
import random
import shutil
from pathlib import Path

import pytest

from harness.proposal import MoveEdit, ProposalError, available_moves, parse_proposal, render, validate
from harness.workspace import Workspace
from rl_pipeline.scaffold import FAILURE_CATEGORIES, ScaffoldError, load_scaffold
from rl_pipeline.tasks import get_task

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
ARITH_MOVES = ["reward_partial_credit", "reward_near_miss_credit", "reward_malformed_penalty",
               "prompt_one_shot", "prompt_instruction", "data_worded_forms", "data_bare_form"]


@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def move(name, hypothesis="a move"):
    return parse_proposal({"hypothesis": hypothesis, "edits": [{"move": name}]})


# ---------------------------------------------------------------------------------------------
# declaring and loading

def test_arith_declares_its_moves_with_docs():
    moves = load_scaffold(ARITH, import_code=False).moves
    assert list(moves) == ARITH_MOVES
    for m in moves.values():
        assert m.doc.strip() and "\n" not in m.doc
        assert {p.file for p in m.patches} <= {"reward.py", "prompt.py", "data.py"}
        assert m.targets and set(m.targets) <= set(FAILURE_CATEGORIES)  # every arith move says what it aims at
    assert moves["reward_near_miss_credit"].targets == ("off_by_small", "sign_error")
    assert moves["data_worded_forms"].targets == ("wrong_answer",)
    # the reward moves shape training alone (their effect scales with how far training moves the policy)
    assert [m.name for m in moves.values() if m.shapes_reward] == [n for n in ARITH_MOVES if n.startswith("reward_")]
    # ... and with the reward's weights they are the scaffold's reward edits, which the local
    # researcher's credit scales by how far training moved the policy
    assert load_scaffold(ARITH, import_code=False).reward_edits() == (
        {"reward.correct", "reward.format", "reward.length"}, {n for n in ARITH_MOVES if n.startswith("reward_")})


def test_a_scaffold_without_moves_yaml_has_no_moves(scaffold):
    (scaffold / "moves.yaml").unlink()
    assert load_scaffold(scaffold, import_code=False).moves == {}
    with pytest.raises(ProposalError, match=r"edit 0: unknown move 'reward_partial_credit'; moves are: none"):
        validate(move("reward_partial_credit"), scaffold)


@pytest.mark.parametrize("text, message", [
    ("m:\n  doc: d\n  patches:\n    - {file: scaffold.yaml, search: task, replace: x}\n",
     "moves.yaml: move m: patch 0 targets 'scaffold.yaml', which is not an editable file; editable files are: "
     "reward.py, prompt.py, data.py"),
    ("m:\n  doc: d\n  patches:\n    - {file: ../rl_pipeline/tasks.py, search: a, replace: b}\n",
     "patch 0 targets '../rl_pipeline/tasks.py', which is not an editable file"),
    ("m:\n  doc: d\n  patches: []\n", "moves.yaml: move m: patches: List should have at least 1 item"),
    ("m:\n  doc: d\n  patches:\n    - {file: reward.py, search: a}\n", "moves.yaml: move m: patches.0.replace: Field required"),
    ("m:\n  doc: d\n  patches:\n    - {file: reward.py, search: a, replace: b, why: c}\n", "patches.0.why: Extra inputs"),
    ("m:\n  patches:\n    - {file: reward.py, search: a, replace: b}\n", "moves.yaml: move m: doc: Field required"),
    ("m:\n  doc: \"two\\nlines\"\n  patches:\n    - {file: reward.py, search: a, replace: b}\n", "move m: doc: String should match"),
    ("m:\n  doc: d\n  patches:\n    - {file: reward.py, search: a, replace: a}\n", "patch 0 replaces its search text with itself"),
    ("Bad-Name:\n  doc: d\n  patches:\n    - {file: reward.py, search: a, replace: b}\n",
     "move name 'Bad-Name' must be lowercase letters"),
    ("- just a list\n", "moves.yaml: expected a mapping at the top level"),
    ("m:\n  doc: d\n  targets: [correct]\n  patches:\n    - {file: reward.py, search: a, replace: b}\n",
     "moves.yaml: move m: targets.0: Input should be 'wrong_answer', 'off_by_small'"),
    ("m:\n  doc: d\n  targets: bad_format\n  patches:\n    - {file: reward.py, search: a, replace: b}\n",
     "moves.yaml: move m: targets: Input should be a valid list"),
])
def test_malformed_moves_are_load_errors(scaffold, text, message):
    (scaffold / "moves.yaml").write_text(text)
    with pytest.raises(ScaffoldError) as err:
        load_scaffold(scaffold, import_code=False)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------
# proposing and validating

def test_a_move_is_a_code_edit_that_round_trips():
    parsed = parse_proposal('{"hypothesis": "h", "edits": [{"move": "prompt_one_shot"}, '
                            '{"knob": "grpo.beta", "value": 0.1}]}')
    assert parsed.edits[0] == MoveEdit("prompt_one_shot")
    assert parsed.kind == "code" and move("prompt_one_shot").kind == "code"
    assert parse_proposal(parsed.to_json()) == parsed
    assert parsed.to_dict()["edits"][0] == {"move": "prompt_one_shot"}


@pytest.mark.parametrize("raw, message", [
    ({"move": 3}, "edit 0: 'move' must be the name of one of the scaffold's moves, got 3"),
    ({"move": ""}, "edit 0: 'move' must be the name of one of the scaffold's moves, got \"\""),
    ({"move": "a", "why": "b"}, "edit 0: unexpected key(s) 'why' in a move edit"),
    ({"move": "a", "knob": "grpo.beta", "value": 0.1}, "edit 0: unknown edit shape"),
    ({"path": "x"}, "expected {'knob', 'value'}, {'file', 'search', 'replace'} or {'move'}"),
])
def test_malformed_move_edits_are_rejected_precisely(raw, message):
    with pytest.raises(ProposalError) as err:
        parse_proposal({"hypothesis": "h", "edits": [raw]})
    assert message in str(err.value)


def test_an_unknown_move_lists_the_moves(scaffold):
    with pytest.raises(ProposalError) as err:
        validate(parse_proposal({"hypothesis": "h", "edits": [{"knob": "grpo.beta", "value": 0.1},
                                                              {"move": "reward_magic"}]}), scaffold)
    assert str(err.value) == f"edit 1: unknown move 'reward_magic'; moves are: {', '.join(sorted(ARITH_MOVES))}"


def _scores(task, example):
    """One completion of each kind the scorer tells apart, with its verdict."""
    want = int(example["answer"])
    completions = [f"{want}\n", f"{want + 1}\n", f"{-want}\n", f"{want + 500}\n", "the answer\n", "\n"]
    return completions, [task.score(c, example) for c in completions]


@pytest.mark.parametrize("name", ARITH_MOVES)
def test_each_arith_move_applies_to_the_initial_scaffold_and_runs(scaffold, name, tmp_path):
    """The patched files compile, load, and their functions give what the move's doc says."""
    spec = load_scaffold(scaffold, import_code=False).moves[name]
    changed = render(move(name), scaffold)
    before = {p.file: (scaffold / p.file).read_text() for p in spec.patches}
    assert set(changed) == set(before)
    for patch in spec.patches:
        assert changed[patch.file] == before[patch.file].replace(patch.search, patch.replace)
    patched = tmp_path / "patched"
    shutil.copytree(scaffold, patched)
    for rel, text in changed.items():
        (patched / rel).write_text(text)
    old, new = load_scaffold(scaffold), load_scaffold(patched)
    task = get_task("arith")
    example = {"id": "x", "task": "arith", "question": "What is 12 plus 30?", "answer": "42", "meta": {}}
    completions, scores = _scores(task, example)
    assert [s.category for s in scores] == ["correct", "off_by_small", "sign_error", "wrong_answer",
                                           "bad_format", "no_answer"]
    weights = old.config["reward"]
    r_old = old.reward.rewards(completions, [example] * 6, scores, weights)
    r_new = new.reward.rewards(completions, [example] * 6, scores, weights)
    gain = [round(b - a, 6) for a, b in zip(r_old, r_new)]
    expected = {"reward_partial_credit": [0, 0.25, 0.25, 0.25, 0, 0],
                "reward_near_miss_credit": [0, 0.5, 0.5, 0, 0, 0],
                "reward_malformed_penalty": [0, 0, 0, 0, -0.5, -0.5]}
    assert gain == expected.get(name, [0] * 6)
    prompt_old, prompt_new = old.prompt.format_prompt("1 + 1"), new.prompt.format_prompt("1 + 1")
    assert (prompt_new == prompt_old) == (not name.startswith("prompt_"))
    assert prompt_new.endswith("Q: 1 + 1\nA: ")
    rows = [task.make(random.Random(i)) for i in range(200)]
    forms = {"data_worded_forms": {1, 3}, "data_bare_form": {0}}.get(name, {0, 1, 2, 3})
    chosen = new.data.training_examples(copy.deepcopy(rows), random.Random(0))
    assert chosen == [r for r in old.data.training_examples(copy.deepcopy(rows), random.Random(0))
                      if r["meta"]["format"] in forms]
    assert {r["meta"]["format"] for r in chosen} == forms
    assert name not in available_moves(patched)  # applied once, never twice


def test_moves_are_available_until_applied_and_the_reward_moves_compose(scaffold):
    assert available_moves(scaffold) == ARITH_MOVES
    changed = render(parse_proposal({"hypothesis": "h", "edits": [{"move": "reward_partial_credit"},
                                                                  {"move": "prompt_one_shot"}]}), scaffold)
    for rel, text in changed.items():
        (scaffold / rel).write_text(text)
    assert available_moves(scaffold) == ["reward_near_miss_credit", "reward_malformed_penalty", "data_worded_forms",
                                         "data_bare_form"]
    changed = render(parse_proposal({"hypothesis": "h", "edits": [{"move": "reward_near_miss_credit"},
                                                                  {"move": "reward_malformed_penalty"},
                                                                  {"move": "data_bare_form"}]}), scaffold)
    for rel, text in changed.items():
        (scaffold / rel).write_text(text)
    assert available_moves(scaffold) == []
    with pytest.raises(ProposalError) as err:
        validate(move("prompt_instruction"), scaffold)
    assert str(err.value).startswith("edit 0: move prompt_instruction does not apply to this scaffold")
    assert "prompt.py: search text" in str(err.value) and "not found" in str(err.value)
    load_scaffold(scaffold)  # still imports


def test_moves_yaml_is_never_editable(scaffold):
    with pytest.raises(ProposalError, match="file 'moves.yaml' is not in the surface"):
        validate(parse_proposal({"hypothesis": "h", "edits": [
            {"file": "moves.yaml", "search": "0.25", "replace": "9"}]}), scaffold)


# ---------------------------------------------------------------------------------------------
# under git

def test_a_move_applied_under_git_commits_exactly_its_patch(tmp_path):
    ws = Workspace.create(tmp_path / "campaign", "arith")
    sha = ws.apply(1, move("reward_near_miss_credit", hypothesis="apply move reward_near_miss_credit"))
    (patch,) = load_scaffold(ws.path, import_code=False).moves["reward_near_miss_credit"].patches
    diff = ws.diff(1)
    assert diff.startswith("diff --git a/reward.py b/reward.py")
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert added == patch.replace.splitlines() and removed == patch.search.splitlines()
    assert len(added) == 2
    assert ws.repo.commit(sha).message.startswith("apply move reward_near_miss_credit")
    ws.checkout(1)
    assert "reward_near_miss_credit" not in available_moves(ws.path)
    ws.checkout_main()
    assert "reward_near_miss_credit" in available_moves(ws.path)
