"""A scaffold's data.py: which training examples GRPO meets and in which order, checked against the
examples it was given, and honoured by a real TRL training run."""

import random
import shutil
from pathlib import Path

import pytest

from rl_pipeline.scaffold import ScaffoldError, load_scaffold
from rl_pipeline.tasks import get_task
from rl_pipeline.train import MAX_REPEAT, TrainingFailed, grpo_config, train_grpo, training_rows
from rl_pipeline.worker import training_key
from tests.fast_scaffold import TEST_PRESET, fast_scaffold

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"


def examples(n=40, seed=0):
    task, rng = get_task("arith"), random.Random(seed)
    return [task.make(rng) for _ in range(n)]


@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def with_selection(path: Path, body: str):
    (path / "data.py").write_text(f"def training_examples(examples, rng):\n{body}\n")
    return load_scaffold(path)


def test_arith_shuffles_every_example_by_the_training_seed():
    rows, scaffold = examples(), load_scaffold(ARITH)
    first, shuffle = training_rows(scaffold, rows, seed=0)
    assert not shuffle  # the order is data.py's: TRL takes it as it is
    assert sorted(r["id"] for r in first) == sorted(r["id"] for r in rows) and first != rows
    assert training_rows(scaffold, rows, seed=0)[0] == first  # the same seed, the same order
    assert training_rows(scaffold, rows, seed=1)[0] != first
    assert grpo_config(scaffold, "/tmp/unused", seed=0, completions=768, shuffle=False).shuffle_dataset is False


def test_without_data_py_trl_shuffles_them_all(scaffold):
    (scaffold / "data.py").unlink()
    loaded, rows = load_scaffold(scaffold), examples()
    assert loaded.data is None and training_rows(loaded, rows, seed=0) == (rows, True)


def test_selection_keeps_the_examples_as_given(scaffold):
    """Selection and repeats are data.py's; the rows trained on are the ones given, matched by id,
    so an example it rewrites comes back as it was."""
    rows = examples()
    loaded = with_selection(scaffold, "    keep = [e for e in examples if e['meta']['op'] == '+']\n"
                                      "    keep[0]['answer'] = '999999'\n"
                                      "    return keep + keep[:1]")
    chosen, shuffle = training_rows(loaded, rows, seed=0)
    plus = [r for r in rows if r["meta"]["op"] == "+"]
    assert not shuffle and chosen == plus + plus[:1]
    assert chosen[0]["answer"] != "999999" and rows[0]["answer"] != "999999"


@pytest.mark.parametrize("body, message", [
    ("    return []", "returned an empty list; it must return a non-empty list"),
    ("    return None", "returned a NoneType; it must return a non-empty list"),
    ("    raise KeyError('op')", "raised KeyError: 'op'"),
    ("    return examples + [{'id': 'made-up', 'question': '1 + 1', 'answer': '2'}]",
     "returned, at position 40, something that is not one of the training examples it was given"),
    ("    return examples[:1] + ['1 + 1']", "returned, at position 1, something that is not one of the training examples"),
    ("    return [{'id': ['a list']}]", "returned, at position 0, something that is not one of the training examples"),
    (f"    return examples * {MAX_REPEAT + 1}", f"returned {40 * (MAX_REPEAT + 1)} examples for 40 given"),
])
def test_a_selection_that_breaks_the_rules_fails_training(scaffold, body, message):
    with pytest.raises(TrainingFailed, match=rf"data.py: training_examples\(\) {message}"):
        training_rows(with_selection(scaffold, body), examples(), seed=0)


def test_data_py_without_its_function_is_a_scaffold_error(scaffold):
    (scaffold / "data.py").write_text("def select(examples):\n    return examples\n")
    with pytest.raises(ScaffoldError, match=r"data.py: no function training_examples\(\)"):
        load_scaffold(scaffold)


def test_data_py_is_part_of_the_training_key(scaffold, tmp_path):
    """Another selection trains another policy; a scaffold without data.py keeps the key it had
    before scaffolds could have one."""
    base = tmp_path / "base"
    base.mkdir()
    key = training_key(load_scaffold(scaffold), base, "train-hash", seed=0)
    with_selection(scaffold, "    return examples[:10]")
    assert training_key(load_scaffold(scaffold), base, "train-hash", seed=0) != key
    (scaffold / "data.py").unlink()
    without = training_key(load_scaffold(scaffold), base, "train-hash", seed=0)
    assert without not in (key, training_key(load_scaffold(scaffold), base, "train-hash", seed=1))


def test_grpo_meets_the_examples_in_data_py_order(tmp_path):
    """A real TRL run on a micro policy: 16 completions in groups of 8 are two prompts, and they are
    the first two data.py put first, each sampled 8 times, in that order."""
    from model import build_policy, build_tokenizer, save_policy

    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, tmp_path / "base")
    path = fast_scaffold(tmp_path / "fast")
    (path / "reward.py").write_text(
        "SEEN = []\n\n\ndef rewards(completions, examples, scores, weights):\n"
        "    SEEN.extend(e['id'] for e in examples)\n    return [float(s.correct) for s in scores]\n")
    loaded = with_selection(path, "    return sorted(examples, key=lambda e: e['id'], reverse=True)")
    rows = examples()
    summary = train_grpo(loaded, base_dir=str(tmp_path / "base"), train_split=rows, out_dir=str(tmp_path / "out"),
                         completions=16, seed=0)
    first_two = sorted((r["id"] for r in rows), reverse=True)[:2]
    assert summary["completions"] == 16
    assert loaded.reward.SEEN == [first_two[0]] * 8 + [first_two[1]] * 8
