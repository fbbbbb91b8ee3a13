"""The campaign configuration: composed once from conf/ and the overrides, frozen, read back.

Configuration flows one way: hydra's Compose API builds one config from conf/campaign.yaml and
the overrides (`@hydra.main` is not used because it owns argv, and this CLI has subcommands);
it is frozen into the campaign folder as config.yaml, and `resume`, `report` and `status` read
that frozen copy back without changing it.

    config = compose_config(["name=demo", "rounds=5", "researcher=random"])
    config = frozen_config(Path("runs/demo"))
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from rl_pipeline.files import write_atomic

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONFIG_FILE = "config.yaml"


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
    config["scaffold"] = str(scaffold_path(config["scaffold"]))
    return config


def scaffold_path(value: str) -> Path:
    """A scaffold folder: a path, or the name of a folder under scaffolds/."""
    for candidate in (Path(value), REPO / "scaffolds" / value):
        if (candidate / "scaffold.yaml").is_file():
            return candidate.resolve()
    raise ValueError(f"scaffold {value!r} not found (a folder under scaffolds/ or a path to one)")


def frozen_config(path: Path) -> dict:
    """The config a campaign was started with, as frozen in its folder."""
    return yaml.safe_load((Path(path) / CONFIG_FILE).read_text())


def freeze_config(path: Path, config: dict) -> None:
    """Write `config` as the campaign's frozen config."""
    write_atomic(Path(path) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
