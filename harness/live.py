"""The live view of a running campaign: round, step, incumbent, last decisions, ETA.

On an interactive terminal it is a rich `Live` panel redrawn in place; elsewhere (logs, CI, a
dumb terminal, `TTY_INTERACTIVE=0`) each change is one plain line, so a campaign's output stays
readable when redirected to a file (a `Live` there would draw nothing until it stops). `paused()`
stops the redrawing while a person is asked something at the terminal (the live panel would
otherwise draw over the question and the prompt) and resumes it after the answer.
"""

from __future__ import annotations

import contextlib
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

LAST_DECISIONS = 6


class LiveView:
    def __init__(self, name: str, total_rounds: int, *, enabled: bool = True, console: Console | None = None):
        self.name, self.total = name, total_rounds
        self.console = console or Console()
        self.enabled = enabled
        self.state = {"round": 0, "step": "starting", "incumbent": None, "eta": None}
        self.decisions: list[tuple[int, str, str]] = []
        self._live: Live | None = None
        self._first_round: int | None = None

    def __enter__(self):
        if self.enabled and self.console.is_interactive:
            self._start()
        return self

    def _start(self) -> None:
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        return False

    @contextlib.contextmanager
    def paused(self):
        """Stop redrawing (the last frame stays on screen) so that what is printed and asked in
        the block is seen and answered; redraw below it afterwards. A new `Live` resumes: the
        stopped one would move the cursor up over its old frame's height, onto the answer."""
        if self._live is None:
            yield
            return
        self._live.stop()
        self._live = None
        try:
            yield
        finally:
            self._start()

    def _render(self):
        s = self.state
        head = Table.grid(padding=(0, 2))
        head.add_row(Text(f"campaign {self.name}", style="bold"), f"round {s['round']}/{self.total}",
                     f"step: {s['step']}", f"ETA {s['eta']}" if s["eta"] else "")
        inc = s["incumbent"]
        if inc:
            head.add_row("incumbent", f"{inc['accuracy']:.3f}", f"round {inc['round']}", "")
        table = Table("round", "decision", "reason", title="last decisions", expand=True)
        for n, decision, reason in self.decisions[-LAST_DECISIONS:]:
            style = {"keep": "green", "revert": "yellow"}.get(decision, "red")
            table.add_row(str(n), Text(decision, style=style), reason[:100])
        return Group(head, table)

    def _show(self, line: str) -> None:
        if self._live is not None:  # drawn now: a step shorter than the 4 Hz redraw is still seen
            self._live.update(self._render(), refresh=True)
        elif self.enabled:
            self.console.print(line, markup=False, highlight=False)

    def round(self, n: int, history: list[dict] | None) -> None:
        self.state["round"] = n
        if history:
            kept = [h for h in history if h["decision"] in ("baseline", "keep")]
            self.state["incumbent"] = {"accuracy": history[-1]["incumbent_accuracy"], "round": kept[-1]["round"]}
        self._show(f"round {n}/{self.total}")

    def step(self, n: int, name: str) -> None:
        self.state.update(round=n, step=name)
        self._show(f"  round {n}: {name}")

    def decision(self, n: int, decision: str, reason: str) -> None:
        self.decisions.append((n, decision, reason or ""))
        self._show(f"  round {n}: {decision}: {reason}")

    def eta(self, start: float, n: int, total: int) -> None:
        """Remaining time from the rounds finished since this process started (resume-safe)."""
        if self._first_round is None:
            self._first_round = n
        done = n - self._first_round
        if done > 0:
            per_round = (time.perf_counter() - start) / done
            self.state["eta"] = time.strftime("%H:%M:%S", time.gmtime(per_round * (total - n + 1)))

    def note(self, text: str) -> None:
        self._show(text)
