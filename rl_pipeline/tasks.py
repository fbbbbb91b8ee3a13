"""Tasks the policy is trained and evaluated on: deterministic generators and strict scorers.

A task makes one example from a `random.Random` and scores a completion against it. The scorer
is the fixed evaluator of the research loop, so it lives here and never in a scaffold.

Strict rule for every task: the answer is the completion's text up to its first newline, with
surrounding whitespace stripped. Nothing else in the completion counts, so "the answer is 168"
is a format failure, not a lucky parse.

Example dict, plain JSON types so it goes into `datasets` as is:

    {"id": "arith-5c1d0e9a7b3f2e41", "task": "arith", "question": "What is 123 plus 45?",
     "answer": "168", "meta": {"canonical": "45+123", "format": 1, "a": 123, "op": "+", "b": 45}}

`meta["canonical"]` is the problem with its surface form stripped; `data.py` keeps the splits
disjoint on it. Bump a task's `version` whenever what `make` produces changes.

    task = get_task("arith")
    example = task.make(random.Random(0))
    task.score(" 168 \\nmore text", example)   # Score(correct=..., format_ok=True, ...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from rl_pipeline.expr import ALLOWED_CHARS, ExprError, evaluate

# Failure categories, so a researcher can see failures grouped by kind.
CATEGORIES = (
    "correct",
    "wrong_answer",  # well-formed, wrong, and no closer kind below applies
    "off_by_small",  # an integer off by one, or by at most 10 and within 10% of the answer
    "sign_error",  # exactly the negated answer
    "wrong_numbers",  # countdown: uses a number not given, or one more often than given
    "no_answer",  # the first line is empty
    "bad_format",  # the first line is not of the answer's form (prose, decimals, '=')
    "invalid_expression",  # countdown: expression characters only, but it does not parse or evaluate
)


@dataclass(frozen=True)
class Score:
    correct: bool
    format_ok: bool  # the answer line passed the strict parse
    parsed: str | None  # the answer text the strict parse accepted; None when format_ok is False
    category: str  # one of CATEGORIES


class Task(Protocol):
    name: str
    version: str

    def make(self, rng: random.Random) -> dict[str, Any]: ...

    def score(self, completion: str, example: dict[str, Any]) -> Score: ...

    def params(self) -> dict[str, Any]: ...


def answer_line(completion: str) -> str:
    """The strict rule: text up to the first newline, surrounding whitespace stripped."""
    return completion.split("\n", 1)[0].strip()


def _example(task: str, question: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(f"{task}\0{meta['canonical']}\0{question}".encode()).hexdigest()
    return {"id": f"{task}-{digest[:16]}", "task": task, "question": question, "answer": answer, "meta": meta}


def _miss(got: int, want: int) -> str:
    """Category of a well-formed integer answer `got` that is not `want`."""
    if want != 0 and got == -want:
        return "sign_error"
    off = abs(got - want)
    if off == 1 or (off <= 10 and 10 * off <= abs(want)):
        return "off_by_small"
    return "wrong_answer"


# ---------------------------------------------------------------------------- arith

_ARITH_FORMATS = (
    "{a} {sym} {b}",
    "What is {a} {word} {b}?",
    "Compute {a}{sym}{b}.",
    "{a} {word} {b} =",
)
_ARITH_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_INTEGER = re.compile(r"-?[0-9]+")  # not \d, which also matches non-ASCII digits
# Far beyond any reference answer; keeps int() away from pathological digit strings.
_MAX_INTEGER_CHARS = 40


def _operand(rng: random.Random, digits: int) -> int:
    # Draw the digit count first, so short operands are as common as long ones.
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


@dataclass(frozen=True)
class ArithTask:
    """Integer +, - and * in a few surface forms; the answer is an integer, possibly negative."""

    name: ClassVar[str] = "arith"
    version: ClassVar[str] = "2"
    # 1-2 digit operands: a 13M base learns to 20-50% of these in minutes on two cores (the loop
    # needs room above it); with 3 digits it stayed under 10% within the pretraining budget.
    max_digits: int = 2  # digits of each operand
    max_mul_digits: int = 3  # digits of both operands of a product together, so products stay small

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def make(self, rng: random.Random) -> dict[str, Any]:
        op = rng.choice("+-*")
        if op == "*":
            sizes = [
                (da, db)
                for da in range(1, self.max_digits + 1)
                for db in range(1, self.max_digits + 1)
                if da + db <= self.max_mul_digits
            ]
            da, db = rng.choice(sizes)
        else:
            da, db = rng.randint(1, self.max_digits), rng.randint(1, self.max_digits)
        a, b = _operand(rng, da), _operand(rng, db)
        fmt = rng.randrange(len(_ARITH_FORMATS))
        question = _ARITH_FORMATS[fmt].format(a=a, b=b, sym=op, word=_ARITH_WORDS[op])
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        # 12+34 and 34+12 are one problem: order commutative operands so they share a split.
        x, y = (min(a, b), max(a, b)) if op in "+*" else (a, b)
        meta = {"canonical": f"{x}{op}{y}", "format": fmt, "a": a, "op": op, "b": b}
        return _example(self.name, question, str(answer), meta)

    def score(self, completion: str, example: dict[str, Any]) -> Score:
        line = answer_line(completion)
        if not line:
            return Score(False, False, None, "no_answer")
        if not _INTEGER.fullmatch(line):
            return Score(False, False, None, "bad_format")
        if len(line) > _MAX_INTEGER_CHARS:
            return Score(False, True, line, "wrong_answer")
        got, want = int(line), int(example["answer"])
        if got == want:
            return Score(True, True, line, "correct")
        return Score(False, True, line, _miss(got, want))


# ---------------------------------------------------------------------------- countdown

_COUNTDOWN_FORMATS = (
    "Using the numbers {listed}, make {target}.",
    "Numbers: {spaced}. Target: {target}.",
    "Reach {target} with {commas} using + - * /, each number at most once.",
)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _combine(rng: random.Random, x: tuple[int, str, int], y: tuple[int, str, int]) -> tuple[int, str, int]:
    """Join two (value, text, precedence) terms with a random operator that keeps values positive
    integers, as in the Countdown game; '+' always qualifies."""
    if x[0] < y[0]:
        x, y = y, x
    for op in rng.sample("+-*/", 4):
        if (op == "-" and x[0] == y[0]) or (op == "/" and (y[0] == 1 or x[0] % y[0])):
            continue
        value = {"+": x[0] + y[0], "-": x[0] - y[0], "*": x[0] * y[0], "/": x[0] // y[0]}[op]
        prec = _PRECEDENCE[op]
        left = x[1] if x[2] >= prec else f"({x[1]})"
        # a + (b - c) == a + b - c and a * (b / c) == a * b / c exactly, so only - and / need them.
        right = y[1] if y[2] > prec or (y[2] == prec and op in "+*") else f"({y[1]})"
        return value, f"{left} {op} {right}", prec
    raise AssertionError("'+' is always a valid operator")


@dataclass(frozen=True)
class CountdownTask:
    """Reach a target from 3-4 numbers with + - * /, each number at most once; the answer is an
    expression. Instances are built from a random expression, so every one is solvable."""

    name: ClassVar[str] = "countdown"
    version: ClassVar[str] = "1"
    min_numbers: int = 3
    max_numbers: int = 4
    max_number: int = 25
    max_target: int = 999

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def make(self, rng: random.Random) -> dict[str, Any]:
        while True:
            count = rng.randint(self.min_numbers, self.max_numbers)
            numbers = [rng.randint(1, self.max_number) for _ in range(count)]
            terms = [(n, str(n), _ATOM) for n in numbers]
            while len(terms) > 1:
                i, j = sorted(rng.sample(range(len(terms)), 2))
                y, x = terms.pop(j), terms.pop(i)
                terms.append(_combine(rng, x, y))
            target, solution, _ = terms[0]
            # A target equal to a given number would need no arithmetic at all.
            if target <= self.max_target and target not in numbers:
                break
        fmt = rng.randrange(len(_COUNTDOWN_FORMATS))
        texts = [str(n) for n in numbers]
        question = _COUNTDOWN_FORMATS[fmt].format(
            target=target,
            listed=", ".join(texts[:-1]) + " and " + texts[-1],
            spaced=" ".join(texts),
            commas=", ".join(texts),
        )
        # The same multiset of numbers in another order is the same problem.
        canonical = ",".join(str(n) for n in sorted(numbers)) + f"->{target}"
        meta = {"canonical": canonical, "format": fmt, "numbers": numbers, "target": target}
        return _example(self.name, question, solution, meta)

    def score(self, completion: str, example: dict[str, Any]) -> Score:
        line = answer_line(completion)
        if not line:
            return Score(False, False, None, "no_answer")
        if not set(line) <= ALLOWED_CHARS:
            return Score(False, False, None, "bad_format")
        try:
            result = evaluate(line)
        except ExprError:
            return Score(False, False, None, "invalid_expression")
        if Counter(result.numbers) - Counter(example["meta"]["numbers"]):
            return Score(False, True, line, "wrong_numbers")
        target = example["meta"]["target"]
        if result.value == target:
            return Score(True, True, line, "correct")
        if result.value.denominator != 1:
            return Score(False, True, line, "wrong_answer")
        return Score(False, True, line, _miss(result.value.numerator, target))


# ---------------------------------------------------------------------------- registry

TASKS: dict[str, Task] = {"arith": ArithTask(), "countdown": CountdownTask()}
DEFAULT_TASK = "arith"


def get_task(name: str) -> Task:
    """The registered task called `name`; a ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
