"""The live view: a redrawn panel on an interactive terminal, plain lines everywhere else."""

import io

from rich.console import Console

from harness.live import LiveView


STEPS = ("analyze", "propose", "evaluate")


def run_view(console: Console) -> str:
    with LiveView("demo", 3, console=console) as live:
        live.round(1, [{"round": 0, "decision": "baseline", "incumbent_accuracy": 0.25}])
        for step in STEPS:  # steps far shorter than the panel's 4 Hz redraw, as with a cached run
            live.step(1, step)
        live.decision(1, "revert", "the lower bound is below the margin")
    return console.file.getvalue()


def test_a_terminal_that_is_not_interactive_gets_one_plain_line_per_change():
    # TERM=dumb or TTY_INTERACTIVE=0: a rich Live would print nothing until it stops
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=False, width=100)
    assert run_view(console).splitlines() == ["round 1/3", *(f"  round 1: {step}" for step in STEPS),
                                              "  round 1: revert: the lower bound is below the margin"]


def test_an_interactive_terminal_gets_the_panel_with_the_step_and_the_decisions():
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=100,
                      color_system=None)
    shown = run_view(console)
    assert "round 1/3" in shown and "incumbent" in shown, shown
    assert all(f"step: {step}" in shown for step in STEPS), shown  # each step is drawn, however short
    assert "last decisions" in shown and "revert" in shown, shown
    assert "  round 1: evaluate\n" not in shown, shown  # the panel, not the plain lines
