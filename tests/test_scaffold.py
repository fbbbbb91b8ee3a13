"""The scaffold loader: knob types and ranges, overrides, missing files, broken code, hashing."""

import shutil
from pathlib import Path

import pytest

from rl_pipeline.scaffold import ScaffoldError, check_knob, content_hash, load_scaffold, parse_overrides, parse_value

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"


@pytest.fixture
def scaffold_copy(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst)
    return dst


def test_default_scaffold_loads_with_library_defaults():
    scaffold = load_scaffold(ARITH)
    assert scaffold.task == "arith"
    assert scaffold.knob("sampling.temperature") == 1.0 and scaffold.knob("sampling.top_p") == 1.0
    assert scaffold.knob("grpo.learning_rate") == 1e-6 and scaffold.knob("grpo.loss_type") == "dapo"
    assert scaffold.prompt.format_prompt("1 + 2") == "Q: 1 + 2\nA: "
    assert set(scaffold.surface["knobs"]) == set(scaffold.knobs())
    assert "sampling.temperature" not in scaffold.training_knobs()
    assert scaffold.train_completions == 768
    assert scaffold.decoders == [{"sampling.temperature": 0.0}]


@pytest.mark.parametrize("override, message", [
    ({"sampling.temperature": 5.0}, "above the maximum"),
    ({"sampling.top_k": 1.5}, "expected an integer"),
    ({"grpo.loss_type": "ppo"}, "is not one of"),
    ({"grpo.learning_rate": "fast"}, "expected a number"),
    ({"sampling.nonsense": 1}, "unknown knob"),
    ({"grpo.max_steps": 20}, "unknown knob 'grpo.max_steps'"),  # the budget sets the steps now
    ({"grpo.num_generations": 4, "grpo.per_device_train_batch_size": 8}, None),
])
def test_overrides_are_checked(override, message):
    if message is None:
        assert load_scaffold(ARITH, override).knob("grpo.num_generations") == 4
    else:
        with pytest.raises(ScaffoldError, match=message):
            load_scaffold(ARITH, override)


def test_batch_must_hold_whole_groups(scaffold_copy):
    surface = scaffold_copy / "surface.yaml"
    surface.write_text(surface.read_text().replace("choices: [8, 16]", "choices: [8, 12, 16]"))
    with pytest.raises(ScaffoldError, match="multiple of grpo.num_generations=8"):
        load_scaffold(scaffold_copy, {"grpo.per_device_train_batch_size": 12})


@pytest.mark.parametrize("budget, message", [
    ("train_seconds: 60", r"budget.train_completions: Field required; budget.train_seconds: Extra inputs are "
                          r"not permitted; the training budget is `budget: \{train_completions: N\}`"),
    ("train_completions: 0", "budget.train_completions: Input should be greater than 0"),
    ("train_completions: 7.5", "budget.train_completions: Input should be a valid integer"),
    ("{}", "budget.train_completions: Field required"),
])
def test_the_training_budget_is_a_number_of_completions(scaffold_copy, budget, message):
    surface = scaffold_copy / "surface.yaml"
    surface.write_text(surface.read_text().replace("train_completions: 768", budget))
    with pytest.raises(ScaffoldError, match=message):
        load_scaffold(scaffold_copy)


@pytest.mark.parametrize("decoders, message", [
    ("decoders: {sampling.temperature: 0.0}", "decoders must be a list"),
    ("decoders: [{}]", "decoder 0 must be a non-empty"),
    ("decoders: [{grpo.learning_rate: 1.0e-5}]", "decoder 0 sets 'grpo.learning_rate'; a decoder sets sampling knobs"),
    ("decoders: [{sampling.temperature: 0.0}, {sampling.top_q: 0.5}]", "decoder 1 sets 'sampling.top_q'"),
    ("decoders: [{sampling.temperature: 9}]", "knob sampling.temperature: 9.0 is above the maximum 2.0"),
])
def test_decoders_are_sampling_settings_in_range(scaffold_copy, decoders, message):
    surface = scaffold_copy / "surface.yaml"
    surface.write_text(surface.read_text().replace("decoders:\n  - {sampling.temperature: 0.0}", decoders))
    with pytest.raises(ScaffoldError, match=message):
        load_scaffold(scaffold_copy)


def test_a_surface_without_decoders_has_none(scaffold_copy):
    surface = scaffold_copy / "surface.yaml"
    surface.write_text(surface.read_text().replace("decoders:\n  - {sampling.temperature: 0.0}", ""))
    assert load_scaffold(scaffold_copy).decoders == []


def test_missing_file_and_syntax_error(scaffold_copy):
    (scaffold_copy / "reward.py").write_text("def rewards(:\n")
    with pytest.raises(ScaffoldError, match=r"reward.py: syntax error on line 1"):
        load_scaffold(scaffold_copy)
    (scaffold_copy / "prompt.py").unlink()
    with pytest.raises(ScaffoldError, match="missing file prompt.py"):
        load_scaffold(scaffold_copy)


def test_code_that_raises_on_import(scaffold_copy):
    (scaffold_copy / "prompt.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ScaffoldError, match="prompt.py: raised RuntimeError on import: boom"):
        load_scaffold(scaffold_copy)


def test_content_hash_tracks_every_file(scaffold_copy):
    before = content_hash(scaffold_copy)
    (scaffold_copy / "__pycache__").mkdir(exist_ok=True)
    (scaffold_copy / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert content_hash(scaffold_copy) == before
    (scaffold_copy / "prompt.py").write_text((scaffold_copy / "prompt.py").read_text() + "\n")
    assert content_hash(scaffold_copy) != before


def test_parse_overrides():
    assert parse_overrides(["sampling.temperature=0.7", "grpo.loss_type=grpo"]) == {
        "sampling.temperature": 0.7, "grpo.loss_type": "grpo"}
    with pytest.raises(ScaffoldError, match="knob=value"):
        parse_overrides(["temperature"])


def test_knob_values_are_read_as_typed():
    assert [parse_value(t) for t in ("1e-5", "3E-4", ".5", "-2", "0.7", "dapo", "yes")] == [
        1e-5, 3e-4, 0.5, -2, 0.7, "dapo", "yes"]
    assert parse_overrides(["grpo.learning_rate=1e-5", "sampling.temperature=.5", "sampling.top_k=8"]) == {
        "grpo.learning_rate": 1e-5, "sampling.temperature": 0.5, "sampling.top_k": 8}
    # `researcher eval grpo.learning_rate=1e-5`: the scaffold takes it as the float it is
    assert load_scaffold(ARITH, parse_overrides(["grpo.learning_rate=1e-5"])).knob("grpo.learning_rate") == 1e-5
    spec = {"type": "float", "min": 1e-7, "max": 1e-3}
    assert check_knob("grpo.learning_rate", "3E-4", spec) == 3e-4
    assert check_knob("sampling.top_k", "8", {"type": "int", "min": 0, "max": 256}) == 8
    with pytest.raises(ScaffoldError, match="expected a number, got 'fast'"):
        check_knob("grpo.learning_rate", "fast", spec)
    with pytest.raises(ScaffoldError, match="expected an integer, got 0.5"):
        check_knob("sampling.top_k", ".5", {"type": "int", "min": 0, "max": 256})
    assert check_knob("grpo.loss_type", "grpo", {"type": "str", "choices": ["grpo", "dapo"]}) == "grpo"


def test_a_hand_written_scaffold_may_say_1e_5(scaffold_copy):
    config = scaffold_copy / "scaffold.yaml"
    config.write_text(config.read_text().replace("learning_rate: 1.0e-6", "learning_rate: 1e-5"))
    assert load_scaffold(scaffold_copy, import_code=False).knob("grpo.learning_rate") == 1e-5
