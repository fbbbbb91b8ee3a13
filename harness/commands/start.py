"""`researcher start`: start a campaign from conf/ and hydra overrides.

    researcher start name=demo rounds=20 researcher=random
    researcher start name=replay researcher=scripted researcher.file=proposals.jsonl approvals=keep
    python -m harness.commands.start name=demo           # the same, alone

`researcher=` and `approvals=` choose from conf/; any other KEY=VALUE sets a key of the schema in
harness/config.py (`researcher.temperature=0.5`, `runner.timeout_s=600`), typed as written
(1e-5 is a number); an unknown key is an error that lists the valid ones. The composed config
is frozen into `runs/<name>/config.yaml`; the base policy is pretrained first when it is missing.
"""

from __future__ import annotations

import argparse
import sys

from harness.campaigns import create_campaign, ensure_campaign_base, new_campaign_dir, run_campaign
from harness.commands import command
from harness.config import compose_config

HELP = "start a campaign (hydra overrides: name= rounds= researcher= ...)"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    config = compose_config(args.overrides)  # a bad override fails here, before any pretraining
    new_campaign_dir(config)
    ensure_campaign_base(config)
    return run_campaign(config, create_campaign(config))


add_parser, main = command("start", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
