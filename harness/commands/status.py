"""`researcher status`: one row per campaign: status, rounds, incumbent with its interval, the last
decisions, a pending approval and the researcher's usage (these two only where some campaign has one).

    researcher status                   # every campaign under runs/
    researcher status demo runs_dir=x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from harness.approvals import pending
from harness.campaigns import campaign_dir, campaign_names, runs_dir_arg
from harness.commands import command
from harness.config import frozen_config
from harness.journal import Journal, incumbent_dir, is_locked
from rl_pipeline.result import read_result

HELP = "a table of one or all campaigns"
HEADINGS = ["status", "rounds", "incumbent", "last decisions", "pending", "researcher usage"]
OPTIONAL = {"pending", "researcher usage"}  # shown when some campaign has one


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?")
    parser.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")


def run(args: argparse.Namespace) -> int:
    if args.name and "=" in args.name:  # `researcher status runs_dir=x`: no name given
        args.overrides, args.name = [args.name, *args.overrides], None
    runs = runs_dir_arg(args.overrides)
    names = [args.name] if args.name else campaign_names(runs)
    if not names:  # a mistyped runs_dir= would otherwise read as an empty table and success
        raise FileNotFoundError(f"no campaign under {runs}/ (start one with `researcher start name=NAME "
                                f"runs_dir={runs}`)")
    rows = {name: _cells(campaign_dir(name, runs)) for name in names}
    # The name is what tells the rows apart: never cut to "efficacy-…" in a narrow terminal; columns
    # that no campaign fills (no approval pending, no model researcher) are left out to make room.
    table = Table(Column("campaign", no_wrap=True, min_width=max((len(n) for n in names), default=8)))
    shown = [h for h in HEADINGS if h not in OPTIONAL or any(cells[h] for cells in rows.values())]
    for heading in shown:
        table.add_column(heading)
    for name, cells in rows.items():
        table.add_row(name, *(cells[h] for h in shown))
    Console().print(table)
    return 0


def _cells(path: Path) -> dict[str, str]:
    """A campaign's cell under each of `HEADINGS`."""
    journal = Journal(path)
    history = journal.get("history") or []
    config = frozen_config(path)
    incumbent = "-"
    if journal.get("incumbent"):
        try:
            m = read_result(incumbent_dir(path, journal.get("incumbent")))["metrics"]
            incumbent = f"{m['accuracy']:.3f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}]"
        except (OSError, ValueError, KeyError) as err:  # one damaged campaign must not hide the others
            incumbent = f"result unreadable: {err}"
    last = " ".join(f"{h['round']}:{h['decision']}" for h in history[-5:] if h["round"] > 0)
    ask = pending(path)
    status = journal.get("status")
    if status in ("running", "pending_approval") and not is_locked(path):
        status = "stopped (resume it)"  # the journal says running, but no process holds the lock
    return {"status": str(status or "not started"), "rounds": f"{max(len(history) - 1, 0)}/{config['rounds']}",
            "incumbent": incumbent, "last decisions": last,
            "pending": f"round {ask['round']} {ask['point']}" if ask else "",
            "researcher usage": usage_text(journal.get("researcher_usage") or {})}


def usage_text(usage: dict) -> str:
    """Tokens (and cost when priced) of a model researcher: total, and the last round's."""
    if "total_tokens" not in usage:
        return ""
    text = f"{usage['total_tokens']} tok (last round {usage.get('round_tokens', 0)})"
    if "cost_usd" in usage:
        text += f", ${usage['cost_usd']:.4f} (last ${usage.get('round_cost_usd', 0.0):.4f})"
    return text


add_parser, main = command("status", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
