"""Campaign subcommands: start, resume, status, approve, diff, report, compare, ui.

Configuration flows one way: hydra's Compose API builds one config from conf/campaign.yaml and
the overrides, it is frozen into the campaign folder as config.yaml, and `resume` reads that
frozen copy back (`runs_dir=` locates the campaign; `rounds=` and
`researcher.budget.*=` may raise its limits). `@hydra.main` is not used because it
owns argv, and this CLI has subcommands.

    researcher start name=demo rounds=5 researcher=random
    researcher resume demo
    researcher status [demo] [runs_dir=runs]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

console = Console()
REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def compose_config(overrides: list[str]) -> dict:
    """The campaign config from conf/ and `key=value` overrides, resolved to plain containers."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name="campaign", overrides=overrides)
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"bad configuration: {err}".splitlines()[0]) from err
    config["name"] = config["name"] or time.strftime("c-%Y%m%d-%H%M%S")
    if not NAME.match(str(config["name"])):
        raise ValueError(f"campaign name {config['name']!r}: use letters, digits, '_', '.', '-' (max 64)")
    config["scaffold"] = str(_scaffold_path(config["scaffold"]))
    return config


def _scaffold_path(value: str) -> Path:
    for candidate in (Path(value), REPO / "scaffolds" / value):
        if (candidate / "scaffold.yaml").is_file():
            return candidate.resolve()
    raise ValueError(f"scaffold {value!r} not found (a folder under scaffolds/ or a path to one)")


def _runs_dir(items: list[str]) -> Path:
    """`runs_dir=...` among trailing key=value items; anything else is an error."""
    runs = "runs"
    for item in items:
        key, sep, value = item.partition("=")
        if key != "runs_dir" or not sep:
            raise ValueError(f"unexpected argument {item!r}: only runs_dir=PATH is accepted here")
        runs = value
    return Path(runs)


def campaign_dir(name: str, runs_dir: Path) -> Path:
    path = runs_dir / name
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"no campaign {name!r} under {runs_dir}/ (start one with `researcher start name={name}`)")
    return path


def _interactive() -> bool:
    return sys.stdin.isatty() and os.environ.get("CI") != "true"


def run_campaign(config: dict, path: Path) -> int:
    """Run (or resume) the campaign in `path` under its lock; print where the report is."""
    from harness.campaign import Campaign
    from harness.journal import CampaignLock

    with CampaignLock(path):
        outcome = Campaign(config, path, interactive=_interactive()).run()
    history = outcome["history"] or []
    kept = sum(h["decision"] == "keep" for h in history)
    console.print(f"campaign {config['name']}: {outcome['status']}, {len(history) - 1} rounds, {kept} kept; "
                  f"report: {path / 'summary.md'}, {path / 'progress.png'}")
    if outcome.get("stop_reason"):
        console.print(f"stopped: {outcome['stop_reason']}")
    return 0


def _start(args) -> int:
    config = compose_config(args.overrides)
    path = Path(config["runs_dir"]) / config["name"]
    if (path / "config.yaml").exists():
        raise ValueError(f"campaign {config['name']!r} already exists in {path}: use `researcher resume {config['name']}`")
    from harness.run_cmd import ensure_base

    ensure_base(config["base_model"], seed=config["seed"])
    return run_campaign(config, create_campaign(config))


def create_campaign(config: dict) -> Path:
    """The campaign folder with the frozen config that `resume` will read back."""
    path = Path(config["runs_dir"]) / config["name"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# What `resume` may change in a frozen config: more rounds, a larger researcher budget.
RESUME_KEYS = re.compile(r"^(rounds|researcher\.budget\.(tokens|cost_usd))$")


def _resume(args) -> int:
    runs = _runs_dir([o for o in args.overrides if o.startswith("runs_dir=")])
    path = campaign_dir(args.name, runs)
    config = yaml.safe_load((path / "config.yaml").read_text())
    changed = False
    for item in (o for o in args.overrides if not o.startswith("runs_dir=")):
        key, sep, raw = item.partition("=")
        if not sep or not RESUME_KEYS.match(key):
            raise ValueError(f"unexpected argument {item!r}: resume accepts runs_dir=, rounds= and "
                             "researcher.budget.tokens= / researcher.budget.cost_usd=")
        value = yaml.safe_load(raw)
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
        if key == "rounds" and not (number and isinstance(value, int)):
            raise ValueError(f"rounds must be a positive integer, got {raw!r}")
        if not number and value is not None:
            raise ValueError(f"{key} must be a positive number, or null for no limit, got {raw!r}")
        *parents, leaf = key.split(".")
        target = config
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ValueError(f"{key}: campaign {args.name!r} has no {'.'.join(parents)} "
                                 f"(its researcher is {config['researcher'].get('name')!r})")
            target = target[part]
        target[leaf] = value
        changed = True
    if changed:
        from harness.journal import is_locked
        from memory.memory import write_atomic

        if is_locked(path):  # the running process would not see the change, and resume is refused anyway
            raise ValueError(f"campaign {args.name!r} is running; stop it before changing its config")
        write_atomic(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return run_campaign(config, path)


def _status(args) -> int:
    from harness.approvals import pending
    from harness.journal import Journal, incumbent_dir, is_locked

    if args.name and "=" in args.name:  # `researcher status runs_dir=x`: no name given
        args.overrides, args.name = [args.name, *args.overrides], None
    runs = _runs_dir(args.overrides)
    names = [args.name] if args.name else sorted(p.name for p in runs.glob("*") if (p / "config.yaml").is_file())
    table = Table("campaign", "status", "rounds", "incumbent", "last decisions", "pending", "researcher usage")
    for name in names:
        path = campaign_dir(name, runs)
        journal = Journal(path)
        history = journal.get("history") or []
        config = yaml.safe_load((path / "config.yaml").read_text())
        incumbent = "-"
        if journal.get("incumbent"):
            from rl_pipeline.result import read_result

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
        table.add_row(name, str(status), f"{max(len(history) - 1, 0)}/{config['rounds']}",
                      incumbent, last, f"round {ask['round']} {ask['point']}" if ask else "",
                      _usage_text(journal.get("researcher_usage") or {}))
    console.print(table)
    return 0


def _usage_text(usage: dict) -> str:
    """Tokens (and cost when priced) of a model researcher: total, and the last round's."""
    if "total_tokens" not in usage:
        return ""
    text = f"{usage['total_tokens']} tok (last round {usage.get('round_tokens', 0)})"
    if "cost_usd" in usage:
        text += f", ${usage['cost_usd']:.4f} (last ${usage.get('round_cost_usd', 0.0):.4f})"
    return text


def _approve(args) -> int:
    from harness.approvals import approve

    decision = approve(campaign_dir(args.name, _runs_dir(args.overrides)), reject=args.reject, note=args.note or "")
    console.print(f"{decision['decision']} round {decision['round']} ({decision['point']}) by {decision['who']}")
    return 0


def _diff(args) -> int:
    patch = campaign_dir(args.name, _runs_dir(args.overrides)) / "rounds" / f"{args.round:03d}" / "diff.patch"
    if not patch.is_file():
        raise FileNotFoundError(f"round {args.round} of {args.name} has no diff (not recorded yet, or no candidate)")
    sys.stdout.write(patch.read_text())
    return 0


def _report(args) -> int:
    from harness.campaign import Campaign

    path = campaign_dir(args.name, _runs_dir(args.overrides))
    config = yaml.safe_load((path / "config.yaml").read_text()) | {"live": False}
    config["tracking"] = {"enabled": False}
    plot, summary = Campaign(config, path).report()
    console.print(summary.read_text())
    console.print(f"plot: {plot}\nsummary: {summary}")
    return 0


def _compare(args) -> int:
    from harness.journal import Journal
    from harness.report import comparison_markdown, comparison_plot

    names = [n for n in args.names if "=" not in n]
    runs = _runs_dir([n for n in args.names if "=" in n])
    if len(names) < 2:
        raise ValueError("compare needs at least two campaigns")
    histories = {name: Journal(campaign_dir(name, runs)).get("history") or [] for name in names}
    plot = comparison_plot(histories, Path(args.out) if args.out else runs / f"compare-{'-'.join(names)}.png")
    console.print(comparison_markdown(histories), soft_wrap=True, markup=False)
    console.print(f"plot: {plot}")
    return 0


def _ui(args) -> int:
    from harness.tracking import default_tracking_uri

    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(_runs_dir(args.overrides))
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1"]
    console.print(f"MLflow UI on http://127.0.0.1:{args.port} over {uri}")
    return subprocess.call(command)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    start = sub.add_parser("start", help="start a campaign (hydra overrides: name= rounds= researcher= ...)")
    start.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    start.set_defaults(func=_start)
    for name, func, text in (("resume", _resume, "resume a campaign after a stop or a crash"),
                             ("approve", _approve, "answer a campaign's pending approval")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("name")
        cmd.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
        cmd.set_defaults(func=func)
        if name == "approve":
            cmd.add_argument("--reject", action="store_true")
            cmd.add_argument("--note", default="")
    status = sub.add_parser("status", help="a table of one or all campaigns")
    status.add_argument("name", nargs="?")
    status.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    status.set_defaults(func=_status)
    diff = sub.add_parser("diff", help="the diff a round proposed")
    diff.add_argument("name")
    diff.add_argument("round", type=int)
    diff.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    diff.set_defaults(func=_diff)
    report = sub.add_parser("report", help="write progress.png and summary.md for a campaign")
    report.add_argument("name")
    report.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    report.set_defaults(func=_report)
    compare = sub.add_parser("compare", help="campaigns side by side: a table and one plot of their incumbents")
    compare.add_argument("names", nargs="+", metavar="NAME", help="two or more campaigns, and runs_dir=PATH")
    compare.add_argument("--out", default=None, help="the plot's path (default: runs_dir/compare-NAMES.png)")
    compare.set_defaults(func=_compare)
    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over our store")
    ui.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_ui)
