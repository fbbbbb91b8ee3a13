"""Safe, exact evaluation of integer arithmetic expressions, for scoring model answers.

The countdown scorer evaluates text that a model wrote, so this is a tokenizer and a small
recursive-descent parser, never Python's `eval`, with hard limits on input length, nesting depth,
literal size and the size of every intermediate value. Arithmetic is exact (`fractions.Fraction`),
so `1/3 + 1/3 + 1/3` is exactly 1 and no rounding can make a wrong answer look right.

    >>> evaluate("(25 - 4) * 3 / 7")
    Evaluation(value=Fraction(9, 1), numbers=[25, 4, 3, 7])

Grammar (usual precedence, binary operators left-associative):

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := "-" unary | atom
    atom   := INTEGER | "(" expr ")"

INTEGER is ASCII digits with no leading zero ("0" itself is fine); spaces and tabs separate
tokens. Anything else -- names, `**`, decimals, exponents, Unicode digits -- is an `ExprError`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

MAX_CHARS = 200
MAX_DEPTH = 32  # nested parentheses and unary minuses together; keeps recursion shallow
MAX_LITERAL_DIGITS = 9
MAX_VALUE_BITS = 256  # numerator and denominator of every intermediate value

DIGITS = frozenset("0123456789")
OPERATORS = frozenset("+-*/()")
SPACES = frozenset(" \t")
# Every character an expression may contain; the scorer uses it to tell prose from a broken expression.
ALLOWED_CHARS = DIGITS | OPERATORS | SPACES


class ExprError(ValueError):
    """The text is not a valid expression, or it cannot be evaluated (division by zero, too large)."""


class Evaluation(NamedTuple):
    value: Fraction
    numbers: list[int]  # the integer literals, in the order written


def evaluate(text: str) -> Evaluation:
    """Parse and evaluate `text` exactly; raise `ExprError` with a message for anything invalid."""
    if not isinstance(text, str):
        raise ExprError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExprError(f"expression is {len(text)} characters long; the limit is {MAX_CHARS}")
    tokens = tokenize(text)
    if not tokens:
        raise ExprError("empty expression")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.i < len(tokens):
        token, pos = tokens[parser.i]
        raise ExprError(f"unexpected {token!r} at position {pos}")
    return Evaluation(value, parser.numbers)


def tokenize(text: str) -> list[tuple[str, int]]:
    """Split `text` into (token, position) pairs: integer literals and single-character operators."""
    tokens: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in SPACES:
            i += 1
        elif char in OPERATORS:
            tokens.append((char, i))
            i += 1
        elif char in DIGITS:
            start = i
            while i < len(text) and text[i] in DIGITS:
                i += 1
            literal = text[start:i]
            if len(literal) > MAX_LITERAL_DIGITS:
                raise ExprError(f"number at position {start} has more than {MAX_LITERAL_DIGITS} digits")
            if len(literal) > 1 and literal[0] == "0":
                raise ExprError(f"number {literal!r} at position {start} has a leading zero")
            tokens.append((literal, start))
        else:
            raise ExprError(f"unexpected character {char!r} at position {i}")
    return tokens


def _checked(value: Fraction) -> Fraction:
    # Repeated multiplication can grow numbers without bound within MAX_CHARS; cap them.
    if value.numerator.bit_length() > MAX_VALUE_BITS or value.denominator.bit_length() > MAX_VALUE_BITS:
        raise ExprError(f"intermediate value exceeds {MAX_VALUE_BITS} bits")
    return value


class _Parser:
    """One pass over the tokens; each grammar rule is a method returning the value it parsed."""

    def __init__(self, tokens: list[tuple[str, int]]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, _ = self.take()
            right = self.term()
            value = _checked(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op, pos = self.take()
            right = self.unary()
            if op == "*":
                value = _checked(value * right)
            elif right == 0:
                raise ExprError(f"division by zero at position {pos}")
            else:
                value = _checked(value / right)
        return value

    def unary(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nests deeper than {MAX_DEPTH} levels")
        if self.peek() == "-":
            self.take()
            value = -self.unary()
        else:
            value = self.atom()
        self.depth -= 1
        return value

    def atom(self) -> Fraction:
        if self.i >= len(self.tokens):
            raise ExprError("expression ends where a number or '(' was expected")
        token, pos = self.take()
        if token == "(":
            value = self.expr()
            if self.peek() != ")":
                raise ExprError(f"'(' at position {pos} is never closed")
            self.take()
            return value
        if token[0] in DIGITS:
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExprError(f"expected a number or '(' at position {pos}, got {token!r}")
