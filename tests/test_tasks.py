"""The strict scorers, the task generators and the safe expression evaluator."""

import json
import random
from fractions import Fraction

import pytest

from rl_pipeline import expr
from rl_pipeline.expr import ExprError, evaluate
from rl_pipeline.tasks import CATEGORIES, TASKS, ArithTask, CountdownTask, Score, get_task


# ---------------------------------------------------------------------------- expr


@pytest.mark.parametrize(
    "text, value, numbers",
    [
        ("2+3*4", 14, [2, 3, 4]),
        ("(2 + 3) * 4", 20, [2, 3, 4]),
        ("10 - 4 - 3", 3, [10, 4, 3]),
        ("48 / 4 / 2", 6, [48, 4, 2]),
        ("-3 - -2", -1, [3, 2]),
        ("-(2+3)*\t2", -10, [2, 3, 2]),
        ("7/2", Fraction(7, 2), [7, 2]),
        ("0", 0, [0]),
    ],
)
def test_expr_evaluates_with_precedence(text, value, numbers):
    result = evaluate(text)
    assert result.value == value and isinstance(result.value, Fraction)
    assert result.numbers == numbers


def test_expr_arithmetic_is_exact():
    assert evaluate("1/3 + 1/3 + 1/3").value == 1
    assert evaluate("1/3 * 3").value == 1
    assert evaluate("(1/10 + 2/10) * 10").value == 3  # 0.1 + 0.2 != 0.3 in floats
    assert evaluate("2/3 - 1/3").value == Fraction(1, 3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os').system('true')", "unexpected character '_' at position 0"),
        ("a + 1", "unexpected character 'a' at position 0"),
        ("abs(-3)", "unexpected character 'a' at position 0"),
        ("2**3", "expected a number or '(' at position 2, got '*'"),
        ("2 ** 3", "expected a number or '(' at position 3, got '*'"),
        ("1e3", "unexpected character 'e' at position 1"),
        ("2.5", "unexpected character '.' at position 1"),
        ("3 // 2", "expected a number or '(' at position 3, got '/'"),
        ("1_000", "unexpected character '_' at position 1"),
        ("０+1", "unexpected character '０' at position 0"),  # full-width digit
        ("²", "unexpected character '²' at position 0"),  # Unicode digit that str.isdigit accepts
        ("05 + 1", "number '05' at position 0 has a leading zero"),
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("(1 + 2", "'(' at position 0 is never closed"),
        ("1 + 2)", "unexpected ')' at position 5"),
        ("1 2", "unexpected '2' at position 2"),
        ("1 +", "expression ends where a number or '(' was expected"),
        ("* 2", "expected a number or '(' at position 0, got '*'"),
        ("+3", "expected a number or '(' at position 0, got '+'"),
        ("()", "expected a number or '(' at position 1, got ')'"),
        ("5 / 0", "division by zero at position 2"),
        ("1 / (3 - 3)", "division by zero at position 2"),
        ("1234567890 + 1", "number at position 0 has more than 9 digits"),
        ("1+" * 150 + "1", "expression is 301 characters long; the limit is 200"),
        ("(" * 40 + "1" + ")" * 40, "expression nests deeper than 32 levels"),
        ("-" * 40 + "1", "expression nests deeper than 32 levels"),
        ("*".join(["999999999"] * 19), "intermediate value exceeds 256 bits"),
    ],
)
def test_expr_rejects_malformed_and_unsafe(text, message):
    with pytest.raises(ExprError) as info:
        evaluate(text)
    assert str(info.value) == message


def test_expr_rejects_non_strings():
    with pytest.raises(ExprError):
        evaluate(123)


def test_expr_limits_are_reachable_but_enforced():
    nested = "(" * (expr.MAX_DEPTH - 1) + "1" + ")" * (expr.MAX_DEPTH - 1)
    assert evaluate(nested).value == 1
    with pytest.raises(ExprError, match="division by zero"):
        evaluate("1/(2-2)")
    with pytest.raises(ExprError, match="characters long"):
        evaluate("1" + " " * expr.MAX_CHARS)


# ---------------------------------------------------------------------------- registry and generators


def test_registry():
    assert set(TASKS) == {"arith", "countdown"}
    assert get_task("arith") is TASKS["arith"]
    with pytest.raises(ValueError, match="unknown task 'nope'.*arith, countdown"):
        get_task("nope")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_deterministic_and_json(name):
    task = get_task(name)
    first = [task.make(random.Random(7)) for _ in range(3)]
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert [task.make(rng_a) for _ in range(50)] == [task.make(rng_b) for _ in range(50)]
    assert first[0] == first[1] == first[2]
    example = first[0]
    assert set(example) == {"id", "task", "question", "answer", "meta"}
    assert example["task"] == name and example["id"].startswith(f"{name}-")
    assert json.loads(json.dumps(example)) == example
    assert isinstance(example["meta"]["canonical"], str)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_answers_score_correct(name):
    task = get_task(name)
    rng = random.Random(3)
    for _ in range(500):
        example = task.make(rng)
        assert task.score(example["answer"], example) == Score(True, True, example["answer"], "correct")


def test_arith_covers_operators_formats_and_negatives():
    task = ArithTask()
    rng = random.Random(0)
    examples = [task.make(rng) for _ in range(400)]
    assert {e["meta"]["op"] for e in examples} == {"+", "-", "*"}
    assert {e["meta"]["format"] for e in examples} == {0, 1, 2, 3}
    assert any(e["answer"].startswith("-") for e in examples)
    for e in examples:
        a, b = e["meta"]["a"], e["meta"]["b"]
        assert 0 <= a <= 999 and 0 <= b <= 999
        if e["meta"]["op"] == "*":
            assert len(str(a)) + len(str(b)) <= task.max_mul_digits
        assert str(a) in e["question"] and str(b) in e["question"]


def test_arith_canonical_ignores_surface_and_operand_order():
    task = ArithTask()
    rng = random.Random(0)
    examples = [task.make(rng) for _ in range(3000)]
    for e in examples:
        a, op, b = e["meta"]["a"], e["meta"]["op"], e["meta"]["b"]
        if op in "+*":
            assert e["meta"]["canonical"] == f"{min(a, b)}{op}{max(a, b)}"
        else:
            assert e["meta"]["canonical"] == f"{a}-{b}"


def test_countdown_instances_are_solvable_by_their_reference():
    task = CountdownTask()
    rng = random.Random(1)
    for _ in range(300):
        e = task.make(rng)
        numbers, target = e["meta"]["numbers"], e["meta"]["target"]
        assert 3 <= len(numbers) <= 4 and all(1 <= n <= 25 for n in numbers)
        assert 1 <= target <= 999 and target not in numbers
        result = evaluate(e["answer"])
        assert result.value == target and sorted(result.numbers) == sorted(numbers)
        assert e["meta"]["canonical"] == ",".join(map(str, sorted(numbers))) + f"->{target}"


# ---------------------------------------------------------------------------- arith scoring

ARITH_168 = {"id": "t", "task": "arith", "question": "123 + 45", "answer": "168", "meta": {}}
ARITH_NEG = {"id": "t", "task": "arith", "question": "33 - 45", "answer": "-12", "meta": {}}


@pytest.mark.parametrize(
    "completion, example, expected",
    [
        ("168", ARITH_168, Score(True, True, "168", "correct")),
        (" 168 \nmore text", ARITH_168, Score(True, True, "168", "correct")),
        ("168\r\n", ARITH_168, Score(True, True, "168", "correct")),
        ("168.0", ARITH_168, Score(False, False, None, "bad_format")),
        ("the answer is 168", ARITH_168, Score(False, False, None, "bad_format")),
        ("168 apples", ARITH_168, Score(False, False, None, "bad_format")),
        ("+168", ARITH_168, Score(False, False, None, "bad_format")),
        ("1,68", ARITH_168, Score(False, False, None, "bad_format")),
        ("١٦٨", ARITH_168, Score(False, False, None, "bad_format")),  # Arabic-Indic digits
        ("", ARITH_168, Score(False, False, None, "no_answer")),
        ("  \n168", ARITH_168, Score(False, False, None, "no_answer")),
        ("-168", ARITH_168, Score(False, True, "-168", "sign_error")),
        ("169", ARITH_168, Score(False, True, "169", "off_by_small")),
        ("158", ARITH_168, Score(False, True, "158", "off_by_small")),
        ("268", ARITH_168, Score(False, True, "268", "wrong_answer")),
        ("9" * 500, ARITH_168, Score(False, True, "9" * 500, "wrong_answer")),
        ("-12", ARITH_NEG, Score(True, True, "-12", "correct")),
        ("12", ARITH_NEG, Score(False, True, "12", "sign_error")),
        ("-11", ARITH_NEG, Score(False, True, "-11", "off_by_small")),
    ],
)
def test_arith_scoring(completion, example, expected):
    assert ArithTask().score(completion, example) == expected
    assert expected.category in CATEGORIES


# ---------------------------------------------------------------------------- countdown scoring

COUNTDOWN_31 = {
    "id": "t",
    "task": "countdown",
    "question": "Using the numbers 2, 3, 5 and 7, make 31.",
    "answer": "3 * 7 + 2 * 5",
    "meta": {"canonical": "2,3,5,7->31", "format": 0, "numbers": [2, 3, 5, 7], "target": 31},
}


@pytest.mark.parametrize(
    "completion, correct, format_ok, category",
    [
        ("3 * 7 + 2 * 5", True, True, "correct"),
        ("(7*3)+(5*2)\nbecause 21 + 10 = 31", True, True, "correct"),
        ("7 * (5 - 2) + 3 * 3 + 1", False, True, "wrong_numbers"),
        ("3 * 7 + 2 * 5 + 2 - 2", False, True, "wrong_numbers"),  # 2 used three times
        ("3 * 7 + 2 * 4 + 2", False, True, "wrong_numbers"),  # 4 is not given
        ("7 / (5 - 5)", False, False, "invalid_expression"),  # division by zero
        ("3 * 7 / (2 - 2)", False, False, "invalid_expression"),
        ("(3 * 7 + 2 * 5", False, False, "invalid_expression"),
        ("3 ** 2", False, False, "invalid_expression"),
        ("3 * 7 + 2 * 5 = 31", False, False, "bad_format"),
        ("31", False, True, "wrong_numbers"),
        ("__import__('os')", False, False, "bad_format"),
        ("", False, False, "no_answer"),
        ("3 * 7 + 5 * 2 - 0", False, True, "wrong_numbers"),
        ("2 + 3 + 5 + 7", False, True, "wrong_answer"),
        ("3 * 7 + 5 + 2", False, True, "off_by_small"),  # 28
        ("7 / 2 + 3", False, True, "wrong_answer"),  # not an integer
        ("-(3 * 7 + 2 * 5)", False, True, "sign_error"),
    ],
)
def test_countdown_scoring(completion, correct, format_ok, category):
    score = CountdownTask().score(completion, COUNTDOWN_31)
    assert (score.correct, score.format_ok, score.category) == (correct, format_ok, category)
    assert (score.parsed is None) == (not format_ok)


def test_countdown_numbers_are_a_multiset():
    example = {**COUNTDOWN_31, "meta": {**COUNTDOWN_31["meta"], "numbers": [3, 3, 5, 7], "target": 12}}
    task = CountdownTask()
    assert task.score("(7 - 5) * (3 + 3)", example).category == "correct"  # both 3s, once each
    assert task.score("3 * 3 + 3", example).category == "wrong_numbers"  # a third 3
    assert task.score("5 + 7", example).category == "correct"  # a subset of the numbers is fine
