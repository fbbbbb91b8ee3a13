"""A copy of the arith scaffold cut to a budget of 16 completions (two GRPO steps at the default
batch, one at the largest) and six-token answers, for end-to-end tests: each round takes seconds,
and what is under test is the loop, not the policy's skill.
`campaign_root` lays out what such a test starts from: a random-weight micro base, the fast
scaffold and a proposals file for the scripted researcher."""

import json
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KNOBS = {("grpo", "max_completion_length"): 6, ("sampling", "max_new_tokens"): 6}
COMPLETIONS = 16  # one optimizer step at the largest batch the surface allows
TEST_PRESET = "micro"  # the base of end-to-end tests: the M2 architecture at a size that runs in fractions of a second


def with_budget(scaffold: Path, completions: int) -> Path:
    """Set the training budget in `scaffold`'s surface.yaml (the runner's time limits follow it)."""
    surface = yaml.safe_load((scaffold / "surface.yaml").read_text())
    surface["budget"]["train_completions"] = completions
    (scaffold / "surface.yaml").write_text(yaml.safe_dump(surface))
    return scaffold


def fast_scaffold(dst: Path) -> Path:
    shutil.copytree(REPO / "scaffolds" / "arith", dst, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((dst / "scaffold.yaml").read_text())
    for (section, key), value in KNOBS.items():
        config[section][key] = value
    (dst / "scaffold.yaml").write_text(yaml.safe_dump(config))
    return with_budget(dst, COMPLETIONS)


def campaign_root(root: Path, proposals: list[dict]) -> tuple[Path, Path, Path]:
    """`root/runs/models/base` (a random-weight micro policy), `root/fast_arith` and
    `root/proposals.jsonl` (one proposal a line); returns (root, scaffold, proposals file)."""
    from model import build_policy, build_tokenizer, save_policy

    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, root / "runs" / "models" / "base")
    script = root / "proposals.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    return root, fast_scaffold(root / "fast_arith"), script
