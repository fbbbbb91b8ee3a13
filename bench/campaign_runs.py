"""What the campaign benchmarks share: a runs folder set up once, campaigns created or resumed in
it by name, and the rounds at which an incumbent reached a level.

`reuse` takes a campaign run earlier in another runs folder in place of one a benchmark would run,
once it has checked that it ran the same config on the same base, data and scaffold. The campaign
may also come as its record (`write_record`): a small JSON file of what those checks read and its
history, which outlives the campaign folder (a machine's runs go with it; a record can be kept in
the repository, so the seeds of a long comparison can be run on different days).

Two set-ups: `real_setup` links a pretrained base and copies the data into the runs folder (the
arith scaffold at its defaults); `fast_setup` builds the end-to-end tests' tiny random base and the
arith scaffold cut to one GRPO step (tests/fast_scaffold.py), whose accuracy is 0 whatever the
researcher does, so it checks that a benchmark runs, not who wins.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rl_pipeline.env import use_offline_env  # noqa: E402

use_offline_env()

from harness.campaigns import create_campaign, run_campaign  # noqa: E402
from harness.config import (CONFIG_FILE, ConfigError, campaign_config, compose_config, data_dir,  # noqa: E402
                            freeze_config, frozen_config)
from harness.journal import Journal  # noqa: E402
from harness.report import NEAR_BEST, campaign_stats  # noqa: E402
from rl_pipeline.manifest import ManifestError, eval_sizes, split_hashes, splits_folder  # noqa: E402
from rl_pipeline.result import read_result  # noqa: E402
from rl_pipeline.scaffold import ScaffoldError, content_hash, load_scaffold  # noqa: E402
from rl_pipeline.worker import file_hash  # noqa: E402

# the end-to-end tests' set-up, and their seeds: a pair for the baseline, one a candidate
FAST_OVERRIDES = ["baseline_seeds=[0,1]", "eval_seeds=[0]", "reeval_seeds=[1]"]


def fast_setup(runs: Path) -> list[str]:
    """The tests' tiny random base and fast scaffold under `runs/fast/` (made once); the overrides
    that use them."""
    sys.path.insert(0, str(REPO / "tests"))
    from fast_scaffold import campaign_root

    root = runs / "fast"
    if not (root / "fast_arith").is_dir():
        campaign_root(root, [])
    return [f"base_model={root / 'runs' / 'models' / 'base'}", f"scaffold={root / 'fast_arith'}", *FAST_OVERRIDES]


def real_setup(runs: Path, base: Path) -> list[str]:
    """The pretrained base linked into `runs/models/base` and the data copied; the arith scaffold."""
    (runs / "models").mkdir(parents=True, exist_ok=True)
    if not (runs / "models" / "base").exists():
        os.symlink(base.resolve(), runs / "models" / "base")
    if (REPO / "runs" / "data").is_dir() and not (runs / "data").exists():
        shutil.copytree(REPO / "runs" / "data", runs / "data")
    return ["scaffold=arith"]


def setup(runs: Path, base: Path, fast: bool) -> list[str]:
    """`fast_setup`, or `real_setup` when there is a base policy at `base` (else fast, saying so)."""
    if not fast and not (base / "config.json").is_file():
        print(f"no base policy at {base}: running the fast set-up (tiny random base, one-step scaffold)")
        fast = True
    return fast_setup(runs) if fast else real_setup(runs, base)


def run(runs: Path, name: str, rounds: int, overrides: list[str]) -> list[dict]:
    """The campaign `name` in `runs`: created with `overrides`, or resumed with `rounds` if the runs
    folder has it (a long benchmark can be stopped and picked up again); its history."""
    path = runs / name
    if (path / CONFIG_FILE).is_file():
        config = frozen_config(path) | {"rounds": rounds}
        freeze_config(path, config)
    else:
        config = compose_config([f"runs_dir={runs}", f"name={name}", f"rounds={rounds}", "live=false", *overrides])
        path = create_campaign(config)
    run_campaign(config, path)
    return Journal(path).get("history") or []


def check_overrides(parser, override_lists: list[list[str]]) -> None:
    """Each campaign's config composed before anything is set up (data, a base, campaigns), so that a
    mistyped KEY=VALUE is the parser's one-line error at once, not a traceback after the set-up."""
    for items in override_lists:
        try:
            compose_config(["name=check", *items])
        except ConfigError as err:
            parser.error(str(err))


class ReuseError(ValueError):
    """A campaign offered for reuse that is not the campaign the benchmark would run."""


# where a campaign's files are, and whether it showed a live view: free to differ in a reused campaign
PLACES = {"name", "runs_dir", "scaffold", "base_model", "live", "rounds"}


def initial_scaffold_hash(campaign: Path) -> str:
    """The content hash of the scaffold a campaign's baseline round evaluated: its initial scaffold."""
    try:
        return read_result(campaign / "rounds" / "000")["scaffold"]["content_hash"]
    except (OSError, ValueError, KeyError) as err:
        raise ReuseError(f"{campaign}: no baseline result to compare its scaffold with "
                         f"({type(err).__name__}: {err})") from None


# the files that make a base policy what it is (pretrain.json also holds how long it took)
BASE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
RECORD_KEYS = {"campaign", "config", "base", "data", "scaffold", "history"}


def base_fingerprint(base: Path) -> str:
    """The hashes of the base's weights, config and tokenizer: the same for a copy or a link of the
    base, or the same pretraining repeated bit for bit, different for any other policy."""
    base = Path(base).resolve()
    try:
        return " ".join(f"{name}:{file_hash(base / name)[:16]}" for name in BASE_FILES)
    except OSError as err:
        raise ReuseError(f"no base policy at {base} ({err.strerror}: {err.filename})") from None


# how much the runner may keep on disk: it changes no result (a policy deleted under the training
# cache's limit is trained again, the same), and a record older than the key has none
UNSCORED = {"runner": {"cache_gb"}}


# an option added with a default that changed behaviour, and how a campaign recorded before it ran
BEFORE = {("researcher", "interior_first"): False}


def _comparable(config: dict) -> dict:
    """A config without where its files are nor how much is kept, as JSON keeps it (so a record
    compares equal)."""
    kept = {k: v for k, v in config.items() if k not in PLACES}
    for section, keys in UNSCORED.items():
        if isinstance(kept.get(section), dict):
            kept[section] = {k: v for k, v in kept[section].items() if k not in keys}
    return json.loads(json.dumps(kept, default=str))


def campaign_record(campaign: Path) -> dict:
    """What `reuse` checks of the campaign folder `campaign`, and its history: its record."""
    campaign = Path(campaign).resolve()
    if not (campaign / CONFIG_FILE).is_file():
        raise ReuseError(f"{campaign}: not a campaign folder (no {CONFIG_FILE}) nor a record file")
    try:
        config = frozen_config(campaign)
        data = split_hashes(data_dir(config), load_scaffold(campaign / "scaffold", import_code=False).task,
                            eval_sizes(config["split_size"]))
    except (ConfigError, ManifestError, ScaffoldError) as err:
        raise ReuseError(f"{campaign}: {err}") from None
    return {"campaign": campaign.name, "config": _comparable(config), "base": base_fingerprint(config["base_model"]),
            "data": data, "scaffold": initial_scaffold_hash(campaign),
            "history": sorted(Journal(campaign).get("history") or [], key=lambda r: r["round"])}


def write_record(campaign: Path, path: Path) -> Path:
    """The record of `campaign` written to `path` (JSON)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(campaign_record(campaign), indent=1, sort_keys=True) + "\n")
    return Path(path)


def write_records(runs: Path, names: list[str], out: Path) -> None:
    """The record of each campaign `names` of `runs` written to `out/NAME.json`, saying where."""
    for name in names:
        print(f"record: {write_record(runs / name, Path(out) / f'{name}.json')}")


def read_record(path: Path) -> dict:
    """A record written by `write_record`; ReuseError naming the file if it is not one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ReuseError(f"{path}: not a readable campaign record ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict) or not RECORD_KEYS <= record.keys():
        missing = sorted(RECORD_KEYS - record.keys()) if isinstance(record, dict) else sorted(RECORD_KEYS)
        raise ReuseError(f"{path}: not a campaign record (missing {', '.join(missing)})")
    history = record["history"]
    if not (isinstance(record["config"], dict) and isinstance(record["data"], dict) and isinstance(history, list)
            and all(isinstance(r, dict) and isinstance(r.get("round"), int) for r in history)):
        raise ReuseError(f"{path}: a damaged campaign record (config and data must be mappings, history "
                         "a list of rounds)")
    return record


def built_splits(data: Path, scaffold: Path, split_size: int) -> str:
    """The task of `scaffold`, its splits (`split_size` problems in eval and held-out) built in `data`
    first if they are not there (as the first campaign there would build them), so records can
    stand in for every campaign of a new runs folder."""
    task = load_scaffold(scaffold, import_code=False).task
    if not splits_folder(data, task, eval_sizes(split_size)).exists():
        from rl_pipeline.data import load_splits  # datasets: only when there is something to build

        load_splits(task, data_dir=data, sizes=eval_sizes(split_size))
    return task


def reuse(source: Path, runs: Path, rounds: int, overrides: list[str]) -> list[dict]:
    """The first `rounds` rounds of the history of `source`, a campaign folder from another runs
    folder or its record (`write_record`), in place of the one `run(runs, ..., rounds, overrides)`
    would run: its frozen config must be the one `overrides` compose, apart from where its files
    are; its base policy, data splits and initial scaffold the same contents, and it must have run
    `rounds` rounds. Anything else raises ReuseError saying what differs."""
    source = Path(source).resolve()
    old = read_record(source) if source.is_file() else campaign_record(source)
    new = compose_config([f"runs_dir={runs}", f"name={old['campaign']}", f"rounds={rounds}", "live=false", *overrides])
    wanted = _comparable(new)
    recorded = _comparable(campaign_config({})) | old["config"]  # a key newer than the record: its default
    for (section, key), value in BEFORE.items():  # ... or how the campaigns before it ran
        if isinstance(recorded.get(section), dict) and key in wanted.get(section, {}):
            recorded[section] = recorded[section] | {key: recorded[section].get(key, value)}
    differ = [f"{k} {recorded.get(k)!r}, wanted {wanted.get(k)!r}"
              for k in sorted(recorded.keys() | wanted.keys()) if recorded.get(k) != wanted.get(k)]
    base = base_fingerprint(new["base_model"])
    if old["base"] != base:
        differ.append(f"base policy {old['base']}, wanted that of {Path(new['base_model']).resolve()}: {base}")
    try:
        task = built_splits(data_dir(new), Path(new["scaffold"]), new["split_size"])
        data = split_hashes(data_dir(new), task, eval_sizes(new["split_size"]))
    except (ManifestError, ScaffoldError) as err:
        raise ReuseError(f"{runs}: {err}") from None
    if old["data"] != data:
        splits = sorted(k for k in old["data"].keys() | data.keys() if old["data"].get(k) != data.get(k))
        differ.append(f"data splits of {data_dir(new)} differ ({', '.join(splits)})")
    if old["scaffold"] != content_hash(Path(new["scaffold"])):
        differ.append(f"initial scaffold, wanted the files of {new['scaffold']}")
    if differ:
        raise ReuseError(f"{source} is another campaign: " + "; ".join(differ))
    done = max((r["round"] for r in old["history"]), default=0)
    if done < rounds:
        raise ReuseError(f"{source} has run {done} of the {rounds} rounds: resume it first")
    return [r for r in old["history"] if r["round"] <= rounds]


def reuse_all(reused: dict[tuple[str, int], Path], runs: Path, rounds: int, overrides_of) -> dict:
    """`reuse` for each of `reused` ({(group, seed): folder}), with `overrides_of(group, seed)`; the
    histories by (group, seed). A campaign that cannot stand in ends the benchmark, saying why."""
    try:
        return {(g, s): reuse(path, runs, rounds, overrides_of(g, s)) for (g, s), path in reused.items()}
    except ReuseError as err:
        sys.exit(f"error: {err}")


def parse_reuse(items: list[str], groups: list[str], seeds: list[int]) -> dict[tuple[str, int], Path]:
    """`GROUP:SEED=PATH` items (`--reuse`) as {(group, seed): path}; ReuseError for a malformed one
    or a group or seed the benchmark does not run."""
    out = {}
    for item in items:
        key, sep, folder = item.partition("=")
        group, colon, seed = key.partition(":")
        if not (sep and colon and group and folder and seed.isdigit()):
            raise ReuseError(f"--reuse {item!r}: write GROUP:SEED=PATH (a campaign folder or its record), "
                             "e.g. local:0=runs/old/default")
        if group not in groups or int(seed) not in seeds:
            raise ReuseError(f"--reuse {item!r}: {group}:{seed} is not run here (groups {groups}, seeds {seeds})")
        out[group, int(seed)] = Path(folder)
    return out


def reached(history: list[dict], level: float | None) -> int | None:
    """The first round whose incumbent is at `level` or above; None if none is."""
    return next((r["round"] for r in sorted(history, key=lambda r: r["round"])
                 if level is not None and r["incumbent_accuracy"] >= level - 1e-9), None)


def median(values: list) -> str:
    """The median of the known values, printed; n/a when none is."""
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.4g}" if known else "n/a"


def group_stats(histories: dict[tuple[str, int], list[dict]], groups: list[str], seeds: list[int],
                rounds: int) -> dict[str, dict]:
    """Per group (a researcher, an evidence condition), over the seeds: the rounds at which each
    campaign reached its own final level (`own`) and came within NEAR_BEST of the best final
    incumbent of that seed's campaigns (`near`; not reached: rounds + 1, so a campaign that stops
    early at a lower level does not look fast), the final, held-out and mean incumbent accuracies,
    and the keeps and false keeps summed."""
    out = {}
    for group in groups:
        row = {"own": [], "near": [], "final": [], "heldout": [], "mean": [], "kept": 0, "false": 0}
        for seed in seeds:
            history = histories[group, seed]
            stats = campaign_stats(history)
            best = max((campaign_stats(histories[g, seed])["final"] or 0.0) for g in groups)
            at = reached(history, best - NEAR_BEST)
            row["own"].append(reached(history, stats["final"]))
            row["near"].append(rounds + 1 if at is None else at)
            row["final"].append(stats["final"])
            row["heldout"].append(stats["heldout_final"])
            row["mean"].append(stats["mean_incumbent"])
            row["kept"] += stats["kept"]
            row["false"] += stats["false_keeps"]
        out[group] = row
    return out


def near_median(near: list[int], rounds: int) -> str:
    """The median round of `near`, shown as ">N" when that is past the rounds run."""
    return (">" if statistics.median(near) > rounds else "") + median(near)
