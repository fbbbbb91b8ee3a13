"""A copy of the arith scaffold cut to one GRPO step and six-token answers, for end-to-end tests:
each round takes seconds, and what is under test is the loop, not the policy's skill."""

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KNOBS = {("grpo", "max_steps"): 1, ("grpo", "max_completion_length"): 6, ("sampling", "max_new_tokens"): 6}


def fast_scaffold(dst: Path) -> Path:
    shutil.copytree(REPO / "scaffolds" / "arith", dst, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((dst / "scaffold.yaml").read_text())
    for (section, key), value in KNOBS.items():
        config[section][key] = value
    (dst / "scaffold.yaml").write_text(yaml.safe_dump(config))
    return dst
