"""The campaigns under a runs folder: find one, create one with its frozen config, run one.

    path = create_campaign(compose_config(["name=demo"]))     # runs/demo/config.yaml
    run_campaign(frozen_config(path), path)                   # under the campaign's lock
    campaign_dir("demo", Path("runs"))                        # a clear error if there is none
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from rich.console import Console

from harness.config import CONFIG_FILE, companions, data_dir, freeze_config
from harness.journal import CampaignLock

console = Console()


def runs_dir_arg(items: list[str]) -> Path:
    """`runs_dir=...` among trailing key=value items (default `runs`); anything else is an error."""
    runs = "runs"
    for item in items:
        key, sep, value = item.partition("=")
        if key != "runs_dir" or not sep:
            raise ValueError(f"unexpected argument {item!r}: only runs_dir=PATH is accepted here")
        runs = value
    return Path(runs)


def campaign_dir(name: str, runs_dir: Path) -> Path:
    """The folder of campaign `name` under `runs_dir`; FileNotFoundError if there is none."""
    path = runs_dir / name
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no campaign {name!r} under {runs_dir}/ (start one with `researcher start name={name}`)")
    return path


def campaign_names(runs_dir: Path) -> list[str]:
    """Every campaign under `runs_dir`, sorted."""
    return sorted(p.name for p in runs_dir.glob("*") if (p / CONFIG_FILE).is_file())


def new_campaign_dir(config: dict) -> Path:
    """Where the campaign `config` names will live; ValueError if a campaign is there already."""
    path = Path(config["runs_dir"]) / config["name"]
    if (path / CONFIG_FILE).exists():
        raise ValueError(f"campaign {config['name']!r} already exists in {path}: use `researcher resume {config['name']}`")
    return path


def create_campaign(config: dict) -> Path:
    """The campaign folder with the frozen config that `resume` will read back."""
    path = new_campaign_dir(config)
    freeze_config(path, config)
    return path


def interactive() -> bool:
    """Whether a person at a terminal can answer approvals here (never in CI)."""
    return sys.stdin.isatty() and os.environ.get("CI") != "true"


def ensure_campaign_base(config: dict) -> None:
    """Pretrain the campaign's base policy if it is missing, on the campaign's own data folder, and
    build the splits its runs are scored on (`split_size` problems in eval and held-out). Raises
    ValueError when the task cannot hold that many distinct problems in a split."""
    from rl_pipeline.corpus import ensure_base  # heavy (datasets, torch): only once the config is checked
    from rl_pipeline.data import load_splits
    from rl_pipeline.manifest import eval_sizes
    from rl_pipeline.scaffold import load_scaffold

    task = load_scaffold(config["scaffold"], import_code=False).task
    root = data_dir(config)
    fresh = not root.exists()
    try:
        load_splits(task, data_dir=root, sizes=eval_sizes(config["split_size"]))
    except RuntimeError as err:  # the problem space is too small for the size asked
        if fresh:  # leave no data folder behind that holds nothing but the failed build's lock
            for lock in root.glob(".*.lock"):
                lock.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                root.rmdir()
        raise ValueError(f"split_size={config['split_size']}: {err}") from None
    # The base is shared by every campaign of the runs folder: pretrained with seed 0 whichever
    # campaign (of whatever seed) happens to be the first to need it.
    ensure_base(config["base_model"], data_dir=str(root))


def run_campaign(config: dict, path: Path) -> int:
    """Run (or resume) the campaign in `path` under its lock; print where the report is."""
    from harness.campaign import Campaign  # heavy (plots, tracking): only once a campaign really runs
    from harness.candidates import CandidatesCampaign
    from harness.report import false_keeps

    several = config["candidates_per_round"] > 1 or companions(config["researcher"])
    kind = CandidatesCampaign if several else Campaign
    with CampaignLock(path):
        outcome = kind(config, path, interactive=interactive()).run()
    history = outcome["history"] or []
    kept = sum(h["decision"] == "keep" for h in history)
    false = len(false_keeps(history)[0])
    console.print(f"campaign {config['name']}: {outcome['status']}, {len(history) - 1} rounds, {kept} kept "
                  f"({false} false: held-out change not positive); "
                  f"report: {path / 'summary.md'}, {path / 'progress.png'}")
    if outcome.get("stop_reason"):
        console.print(f"stopped: {outcome['stop_reason']}")
    return 0
