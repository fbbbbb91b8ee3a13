"""Researcher backends behind one interface (`base.Researcher`), chosen by name.

    researcher = make_researcher({"name": "random"}, campaign_dir=Path("runs/demo"), seed=0,
                                 base_model="runs/models/base")

`BACKENDS` maps a name to the class that implements it ("module:Class"); a backend's module is
imported only when it is chosen, so the knob baselines never load torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from harness.researchers.base import Researcher, ResearcherExhausted, ResearcherStopped

BACKENDS = {
    "scripted": "harness.researchers.scripted:ScriptedResearcher",
    "random": "harness.researchers.random_search:RandomResearcher",
    "local": "harness.researchers.local:LocalResearcher",
    "openai": "harness.researchers.openai_researcher:OpenAIResearcher",
    "tpe": "harness.researchers.optuna_search:OptunaResearcher",
    "cmaes": "harness.researchers.optuna_search:OptunaResearcher",
}


def make_researcher(config: dict, *, campaign_dir: Path, seed: int, base_model: str) -> Researcher:
    """The researcher named by `config["name"]`, configured by the rest of `config`."""
    name = config.get("name")
    if name not in BACKENDS:
        raise ValueError(f"unknown researcher {name!r}; choose one of: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    backend = getattr(importlib.import_module(module), cls)
    return backend(dict(config), campaign_dir=Path(campaign_dir), seed=seed, base_model=str(base_model))


__all__ = ["BACKENDS", "Researcher", "ResearcherExhausted", "ResearcherStopped", "make_researcher"]
