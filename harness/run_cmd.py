"""`researcher run`: the main job (`make run`).

Pretrains the base policy if it is missing, then runs the default campaign: 100 rounds, the
local researcher, the arith scaffold, no approvals. The campaign is named `default`; running
again resumes it where it stopped, so an interrupted `make run` loses nothing.

    researcher run [rounds=100 ...]        (hydra overrides, as for `researcher start`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from rich.console import Console

console = Console()
DEFAULT_CAMPAIGN = ["name=default", "researcher=local", "scaffold=arith", "approvals=none"]


def ensure_base(base: str, seed: int = 0) -> None:
    """Pretrain the base policy into `base` unless a checkpoint is already there."""
    if (Path(base) / "config.json").is_file():
        console.print(f"base policy: {base} (found)")
        return
    from rl_pipeline.corpus import pretrain_base

    console.print(f"base policy: {base} missing, pretraining it")
    pretrain_base(out=base, seed=seed)


def _run(args) -> int:
    from harness.campaign_cmd import compose_config, create_campaign, run_campaign

    config = compose_config(DEFAULT_CAMPAIGN + args.overrides)
    ensure_base(config["base_model"], seed=config["seed"])
    path = Path(config["runs_dir"]) / config["name"]
    if (path / "config.yaml").is_file():
        console.print(f"resuming campaign {config['name']} in {path}")
        config = yaml.safe_load((path / "config.yaml").read_text())
    else:
        path = create_campaign(config)
    return run_campaign(config, path)


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the main job: pretrain the base if missing, then the default campaign")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="hydra overrides for a new default campaign")
    run.set_defaults(func=_run)
