"""`researcher resume`: continue a campaign after a stop or a kill -9; nothing is lost or redone.

    researcher resume demo
    researcher resume demo rounds=150                          # raise its limits
    researcher resume m27 researcher.budget.tokens=4000000

It reads the campaign's frozen config back; `rounds=` and `researcher.budget.*=` may raise its
limits (written back to config.yaml before the campaign runs), `runs_dir=` locates it.
"""

from __future__ import annotations

import argparse
import re
import sys

from harness.campaigns import campaign_dir, run_campaign, runs_dir_arg
from harness.commands import command
from harness.config import campaign_config, freeze_config, frozen_config
from harness.journal import is_locked

HELP = "resume a campaign after a stop or a crash"
# What `resume` may change in a frozen config: more rounds, a larger researcher budget.
RESUME_KEYS = re.compile(r"^(rounds|researcher\.budget\.(tokens|cost_usd))$")


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="runs_dir=PATH, rounds=N, researcher.budget.tokens=N, researcher.budget.cost_usd=X")


def resumed_config(config: dict, items: list[str], name: str) -> dict:
    """The frozen `config` with the `key=value` items merged in by OmegaConf, validated by the
    schema; only `rounds` and `researcher.budget.*` may change."""
    from omegaconf import OmegaConf

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not RESUME_KEYS.match(key):
            raise ValueError(f"unexpected argument {item!r}: resume accepts runs_dir=, rounds= and "
                             "researcher.budget.tokens= / researcher.budget.cost_usd=")
        *parents, _ = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ValueError(f"{key}: campaign {name!r} has no {'.'.join(parents)} "
                             f"(its researcher is {config['researcher']['name']!r})")
    merged = OmegaConf.merge(OmegaConf.create(config), OmegaConf.from_dotlist(items))
    return campaign_config(OmegaConf.to_container(merged), typed=dict(i.split("=", 1) for i in items))


def run(args: argparse.Namespace) -> int:
    path = campaign_dir(args.name, runs_dir_arg([o for o in args.overrides if o.startswith("runs_dir=")]))
    config = frozen_config(path)
    items = [o for o in args.overrides if not o.startswith("runs_dir=")]
    if items:
        config = resumed_config(config, items, args.name)
        if is_locked(path):  # the running process would not see the change, and resume is refused anyway
            raise ValueError(f"campaign {args.name!r} is running; stop it before changing its config")
        freeze_config(path, config)
    return run_campaign(config, path)


add_parser, main = command("resume", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
