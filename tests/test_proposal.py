"""Proposals: parsing with precise errors, and validation against the arith surface before any write."""

import json
import shutil
from pathlib import Path

import pytest

from harness.proposal import (FileEdit, KnobEdit, ProposalError, parse_proposal, render, set_knob,
                              validate)
from rl_pipeline.scaffold import ScaffoldError, content_hash

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
LENGTH_COST = "min(len(completion), 64) / 64"


@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def proposal(*edits, hypothesis="a change"):
    return parse_proposal({"hypothesis": hypothesis, "edits": list(edits)})


def test_parse_both_edit_kinds_and_round_trip():
    text = json.dumps({"hypothesis": "cooler sampling helps", "edits": [
        {"knob": "sampling.temperature", "value": 0.7},
        {"file": "reward.py", "search": "a", "replace": "b"}]})
    parsed = parse_proposal(text)
    assert parsed.edits == (KnobEdit("sampling.temperature", 0.7), FileEdit("reward.py", "a", "b"))
    assert parsed.kind == "code"
    assert parse_proposal(parsed.to_json()) == parsed
    assert proposal({"knob": "grpo.beta", "value": 0.1}).kind == "knob"


def test_the_edits_key_names_what_changes_not_how_it_is_worded():
    beta = {"knob": "grpo.beta", "value": 0.1}
    assert proposal(beta, hypothesis="one").edits_key == proposal(beta, hypothesis="two").edits_key
    assert proposal(beta).edits_key != proposal({"knob": "grpo.beta", "value": 0.2}).edits_key
    assert proposal(beta, {"move": "m"}).edits_key != proposal({"move": "m"}, beta).edits_key


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
    ({"edits": [{"knob": "grpo.beta", "value": 0.1}]}, "missing 'hypothesis'"),
    ({"hypothesis": "  ", "edits": []}, "'hypothesis' must be a non-empty string"),
    ({"hypothesis": "h"}, "missing 'edits'"),
    ({"hypothesis": "h", "edits": []}, "'edits' is empty"),
    ({"hypothesis": "h", "edits": {"knob": "grpo.beta"}}, "'edits' must be a list, got dict"),
    ({"hypothesis": "h", "edits": [], "why": "x"}, "unexpected key(s) 'why'"),
    ({"hypothesis": "h", "edits": [7]}, "edit 0: expected an object, got int"),
    ({"hypothesis": "h", "edits": [{"path": "reward.py"}]}, "edit 0: unknown edit shape with keys ['path']"),
    ({"hypothesis": "h", "edits": [{"knob": "a", "file": "b"}]}, "edit 0: unknown edit shape"),
    ({"hypothesis": "h", "edits": [{"knob": "grpo.beta"}]}, "edit 0: knob edit is missing 'value'"),
    ({"hypothesis": "h", "edits": [{"knob": "grpo.beta", "value": 0.1, "min": 0}]},
     "edit 0: unexpected key(s) 'min' in a knob edit"),
    ({"hypothesis": "h", "edits": [{"file": "reward.py", "search": "a"}]}, "edit 0: file edit is missing 'replace'"),
    ({"hypothesis": "h", "edits": [{"knob": "grpo.beta", "value": [1]}]}, "'value' must be a number or a string"),
    ({"hypothesis": "h", "edits": [{"knob": "grpo.beta", "value": True}]}, "'value' must be a number or a string"),
    ({"hypothesis": "h", "edits": [{"knob": "grpo.beta", "value": 0.1}, {"file": 3, "search": "a", "replace": "b"}]},
     "edit 1: 'file' must be a string, got int"),
    ({"hypothesis": "h", "edits": [{"file": "reward.py", "search": "", "replace": "b"}]},
     "edit 0: 'search' must not be empty"),
])
def test_malformed_proposals_are_rejected_precisely(raw, message):
    with pytest.raises(ProposalError) as err:
        parse_proposal(raw)
    assert message in str(err.value)


def test_set_knob_keeps_comments_alignment_and_types():
    text = (ARITH / "scaffold.yaml").read_text()
    edited = set_knob(text, "sampling.top_k", 12)
    assert "  top_k: 12             # 0 = off\n" in edited
    assert edited.replace("top_k: 12             #", "top_k: 0              #") == text
    assert "learning_rate: 5.0e-06" in set_knob(text, "grpo.learning_rate", 5e-6)  # PyYAML reads it as a float
    # `temperature` is a key of both sampling and grpo: only the named section changes.
    edited = set_knob(text, "grpo.temperature", 0.5)
    assert "  temperature: 1.0\n" in edited and "  temperature: 0.5          # rollout" in edited


@pytest.mark.parametrize("knob, value, line", [
    ("sampling.top_k", 12, "  top_k: 12             # 0 = off"),
    ("grpo.learning_rate", 5e-6, "  learning_rate: 5.0e-06"),
    ("grpo.temperature", 0.5, "  temperature: 0.5          # rollout sampling during training (TRL's default)"),
    ("grpo.loss_type", "grpo", "  loss_type: grpo"),
    ("grpo.loss_type", "yes", '  loss_type: "yes"'),  # YAML 1.1 would read a bare yes as true
    ("reward.correct", 2, "  correct: 2"),
])
def test_a_knob_edit_changes_exactly_one_line_and_keeps_every_comment(knob, value, line):
    before = (ARITH / "scaffold.yaml").read_text()
    after = set_knob(before, knob, value)
    changed = [(a, b) for a, b in zip(before.splitlines(keepends=True), after.splitlines(keepends=True)) if a != b]
    assert len(after.splitlines()) == len(before.splitlines())
    assert changed == [(changed[0][0], line + "\n")]
    assert [x for x in before.splitlines() if "#" in x and x.split("#")[0].strip() == ""] == [
        x for x in after.splitlines() if "#" in x and x.split("#")[0].strip() == ""]  # comment lines, all of them
    with pytest.raises(ScaffoldError, match="no key 'warmth' under section 'sampling:'"):
        set_knob(before, "sampling.warmth", 1.0)


def test_a_string_value_for_a_numeric_knob_is_read_as_typed(scaffold):
    edits = [{"knob": "grpo.learning_rate", "value": "1e-5"}, {"knob": "sampling.temperature", "value": ".5"}]
    text = render(parse_proposal({"hypothesis": "typed by a model", "edits": edits}), scaffold)["scaffold.yaml"]
    assert "  learning_rate: 1.0e-05\n" in text and "  temperature: 0.5\n" in text


def test_render_returns_new_texts_and_writes_nothing(scaffold):
    before = content_hash(scaffold)
    changed = render(proposal({"knob": "sampling.temperature", "value": 0.7},
                              {"file": "reward.py", "search": LENGTH_COST, "replace": "min(len(completion), 32) / 32"},
                              {"knob": "grpo.num_generations", "value": 4}), scaffold)
    assert set(changed) == {"scaffold.yaml", "reward.py"}
    assert "temperature: 0.7" in changed["scaffold.yaml"] and "num_generations: 4" in changed["scaffold.yaml"]
    assert "/ 32" in changed["reward.py"]
    assert content_hash(scaffold) == before


@pytest.mark.parametrize("edit, message", [
    ({"knob": "sampling.temperature", "value": 3.0}, "edit 1: knob sampling.temperature: 3.0 is above the maximum 2.0"),
    ({"knob": "grpo.loss_type", "value": "ppo"}, "edit 1: knob grpo.loss_type: 'ppo' is not one of"),
    ({"knob": "sampling.top_k", "value": "many"}, "edit 1: knob sampling.top_k: expected an integer"),
    ({"knob": "sampling.warmth", "value": 1.0}, "edit 1: unknown knob 'sampling.warmth'"),
    ({"knob": "grpo.max_steps", "value": 20}, "edit 1: unknown knob 'grpo.max_steps'"),  # the budget sets the steps
    ({"file": "README.md", "search": "a", "replace": "b"}, "edit 1: file 'README.md' is not in the surface"),
    ({"file": "scaffold.yaml", "search": "task", "replace": "b"}, "file 'scaffold.yaml' is not in the surface"),
    ({"file": "surface.yaml", "search": "max: 2.0", "replace": "max: 9.0"}, "surface.yaml defines what may be edited"),
    ({"file": "../rl_pipeline/evaluate.py", "search": "a", "replace": "b"}, "points into rl_pipeline/"),
    ({"file": "../../etc/passwd", "search": "a", "replace": "b"}, "contains '..'"),
    ({"file": "/etc/passwd", "search": "root", "replace": "b"}, "is absolute"),
    ({"file": "reward.py", "search": "no such text", "replace": "b"}, "edit 1: reward.py: search text 'no such text' not found"),
    ({"file": "reward.py", "search": "weights", "replace": "w"}, "search text 'weights' found 4 times"),
    ({"file": "reward.py", "search": "out = []", "replace": "out = ["},
     "edit 1: reward.py does not compile after the edit: line 10:"),
    ({"file": "reward.py", "search": "def rewards(", "replace": "def reward("},
     "edit 1: reward.py no longer defines the function rewards() at top level"),
    ({"file": "reward.py", "search": "out = []", "replace": "out = []"}, "replace is identical to search"),
])
def test_rejections_name_the_edit_and_reason(scaffold, edit, message):
    before = content_hash(scaffold)
    with pytest.raises(ProposalError) as err:
        validate(proposal({"knob": "grpo.beta", "value": 0.1}, edit), scaffold)
    assert message in str(err.value)
    assert content_hash(scaffold) == before


def test_long_search_text_is_quoted_by_a_short_prefix(scaffold):
    with pytest.raises(ProposalError, match=r"search text 'x{40}\.\.\.' not found"):
        validate(proposal({"file": "reward.py", "search": "x" * 500, "replace": "y"}), scaffold)


def test_proposal_that_changes_nothing_is_rejected(scaffold):
    with pytest.raises(ProposalError, match="changes nothing") as err:
        validate(proposal({"knob": "sampling.temperature", "value": 1.0}), scaffold)
    assert err.value.index is None


def test_symlinks_on_the_path_are_rejected(scaffold, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("def rewards(*a):\n    return []\n")
    (scaffold / "reward.py").unlink()
    (scaffold / "reward.py").symlink_to(outside)  # a listed file that is a link
    (scaffold / "lib").symlink_to(tmp_path, target_is_directory=True)  # a linked folder
    for name, message in (("reward.py", "reward.py is a symlink"), ("lib/outside.py", "lib is a symlink")):
        with pytest.raises(ProposalError, match=message):
            validate(proposal({"file": name, "search": "return []", "replace": "return [0]"}), scaffold)
    assert outside.read_text().endswith("return []\n")


def test_later_edits_see_earlier_ones(scaffold):
    changed = render(proposal({"file": "reward.py", "search": LENGTH_COST, "replace": "LENGTH_COST"},
                              {"file": "reward.py", "search": "LENGTH_COST", "replace": "len(completion) / 32"}),
                     scaffold)
    assert "weights[\"length\"] * len(completion) / 32" in changed["reward.py"]


def test_code_is_compiled_but_never_imported_by_validation(scaffold, tmp_path):
    """An import-time error is the sandboxed runner's to report; validation must not run the code."""
    marker = tmp_path / "imported"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nraise SystemExit(3)\n\n\ndef rewards("
    edit = {"file": "reward.py", "search": "def rewards(", "replace": code}
    before = (scaffold / "reward.py").read_text()
    proposal = parse_proposal({"hypothesis": "h", "edits": [edit]})
    assert validate(proposal, scaffold) is None
    assert render(proposal, scaffold)["reward.py"] == before.replace("def rewards(", code, 1)
    assert not marker.exists()  # the module body never ran
    assert (scaffold / "reward.py").read_text() == before
