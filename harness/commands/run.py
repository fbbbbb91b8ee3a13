"""`researcher run`: the main job (`make run`).

Pretrains the base policy if it is missing, then runs the default campaign: 100 rounds, the
local researcher, the arith scaffold, no approvals. The campaign is named `default`; running
again resumes it where it stopped, so an interrupted `make run` loses nothing.

    researcher run [rounds=100 ...]        (hydra overrides, as for `researcher start`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from harness.campaigns import create_campaign, ensure_campaign_base, run_campaign
from harness.commands import command
from harness.config import CONFIG_FILE, compose_config, frozen_config

HELP = "the main job: pretrain the base if missing, then the default campaign"
DEFAULT_CAMPAIGN = ["name=default", "researcher=local", "scaffold=arith", "approvals=none"]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="hydra overrides for a new default campaign")


def run(args: argparse.Namespace) -> int:
    config = compose_config(DEFAULT_CAMPAIGN + args.overrides)
    path = Path(config["runs_dir"]) / config["name"]
    resuming = (path / CONFIG_FILE).is_file()
    if resuming:  # the campaign goes on with the config it was started with
        Console().print(f"resuming campaign {config['name']} in {path}")
        config = frozen_config(path)
    ensure_campaign_base(config)
    return run_campaign(config, path if resuming else create_campaign(config))


add_parser, main = command("run", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
