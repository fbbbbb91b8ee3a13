"""`researcher approve`: answer a campaign's pending approval, from any terminal.

    researcher approve demo --show                     # what is asked: the question and the diff
    researcher approve demo --note "looks right"
    researcher approve demo --reject --note "touches the reward"
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from harness.approvals import ApprovalError, approve, pending, question_panel
from harness.campaigns import campaign_dir, runs_dir_arg
from harness.commands import command

HELP = "answer a campaign's pending approval"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    parser.add_argument("--reject", action="store_true")
    parser.add_argument("--note", default="")
    parser.add_argument("--show", action="store_true", help="show the pending question and its diff; answer nothing")


def run(args: argparse.Namespace) -> int:
    path = campaign_dir(args.name, runs_dir_arg(args.overrides))
    if args.show:
        request = pending(path)
        if request is None:
            raise ApprovalError(f"nothing is waiting for approval in {path}")
        Console().print(question_panel(request["point"], request["round"], request["summary"],
                                       request.get("diff", "")))
        Console().print(f"waiting since {request['asked_at']}; without an answer by {request.get('expires_at')} "
                        f"the default ({request.get('default')}) applies")
        return 0
    decision = approve(path, reject=args.reject, note=args.note)
    Console().print(f"{decision['decision']} round {decision['round']} ({decision['point']}) by {decision['who']}")
    return 0


add_parser, main = command("approve", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
