"""The environment of a child run at a real pseudo-terminal in a test: what the test's own
environment says about its terminal (CI, a dumb or non-interactive one) must not reach it."""

import os

# CI=true turns the terminal gate off; rich reads the others (TTY_INTERACTIVE=0 turns the live view
# into plain lines, which have no "step: ..." panel to look for)
NOT_A_TERMINAL = ("CI", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES")


def terminal_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_TERMINAL}
    return env | {"TERM": "xterm-256color"} | extra
