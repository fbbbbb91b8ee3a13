"""The typed configuration: defaults from the schema, unknown keys named with the valid ones, values
typed as people type them, frozen configs of older campaigns still read, resume merges by OmegaConf."""

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.commands.resume import resumed_config
from harness.config import (RESEARCHERS, Campaign, ConfigError, LocalOptions, compose_config, freeze_config,
                            frozen_config)
from harness.researchers import BACKENDS

REPO = Path(__file__).resolve().parents[1]
ARITH = REPO / "scaffolds" / "arith"

# config.yaml as the previous version froze it (the composed conf/ yaml, dumped by PyYAML): a local
# researcher from before credit_weight existed, with a keep_and_code policy.
OLD_LOCAL = """\
researcher:
  name: local
  temperature: 1.0
  learning_rate: 0.0001
approvals:
  name: keep_and_code
  when:
  - keep
  - code
  n: 10
  timeout_s: 3600
  default: reject
name: old
rounds: 100
scaffold: /somewhere/scaffolds/arith
runs_dir: /tmp/r
seed: 0
base_model: /tmp/r/models/base
baseline_seeds:
- 0
- 1
- 2
- 3
- 4
- 5
eval_seeds:
- 0
- 1
- 2
reeval_seeds:
- 3
- 4
- 5
margin: 0.0
memory_budget_tokens: 600
runner:
  timeout_s: 900
  memory_gb: 16
tracking:
  enabled: true
  uri: null
live: true
"""
OLD_OPENAI = """\
researcher:
  name: openai
  base_url: http://127.0.0.1:8000/v1
  model: null
  api_key_env: OPENAI_API_KEY
  temperature: 0.7
  top_p: 1.0
  max_tokens: 1024
  seed: null
  timeout_s: 120
  max_retries: 4
  context_chars: 24000
  critique: true
  critique_max_tokens: 256
  budget:
    tokens: 2000000
    cost_usd: null
  prices:
    prompt: 0.3
    completion: 1.2
approvals:
  name: none
  when: []
  n: 10
  timeout_s: 3600
  default: reject
name: m27
rounds: 20
scaffold: /somewhere/scaffolds/arith
runs_dir: runs
seed: 3
base_model: runs/models/base
baseline_seeds: [0, 1, 2, 3, 4, 5]
eval_seeds: [0, 1, 2]
reeval_seeds: [3, 4, 5]
margin: 0.0
memory_budget_tokens: 600
runner: {timeout_s: 900, memory_gb: 16}
tracking: {enabled: true, uri: null}
live: true
"""


def assert_kept(old, new, path="config"):
    if isinstance(old, dict):
        for key, value in old.items():
            assert_kept(value, new[key], f"{path}.{key}")
    else:
        assert (type(new), new) == (type(old), old), path


def one_line_error(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


# ---------------------------------------------------------------- compose

def test_defaults_come_from_the_schema(tmp_path):
    config = compose_config(["name=demo", f"runs_dir={tmp_path}"])
    schema = Campaign().model_dump()
    for key in ("rounds", "seed", "baseline_seeds", "eval_seeds", "reeval_seeds", "retrain_seeds", "margin",
                "memory_budget_tokens", "runner", "tracking", "live"):
        assert config[key] == schema[key], key
    assert config["researcher"] == LocalOptions().model_dump() == {
        "name": "local", "temperature": 1.0, "learning_rate": 1e-4, "grid_points": 7, "context_tokens": 768,
        "reward_scale": 10.0, "credit_weight": 100.0, "evidence": True, "stack": 1.0, "companions": True,
        "interior_first": True}
    assert config["approvals"] == {"name": "none", "when": [], "n": 10, "timeout_s": 3600.0, "default": "reject"}
    assert config["base_model"] == f"{tmp_path}/models/base"
    assert config["scaffold"] == str(ARITH)
    # conf/campaign.yaml scores new campaigns on 800 problems; the schema keeps 200 for frozen configs
    assert config["split_size"] == 800 and Campaign().split_size == 200
    # a key conf/ does not write out is still overridable: its default is the schema's
    approvals = compose_config(["researcher=random", "approvals=keep", "approvals.n=3"])["approvals"]
    assert approvals == {"name": "keep", "when": ["keep"], "n": 3, "timeout_s": 3600.0, "default": "reject"}


def test_every_researcher_has_a_schema_and_a_backend():
    assert set(RESEARCHERS) == set(BACKENDS)
    assert {p.stem for p in (REPO / "conf" / "researcher").glob("*.yaml")} == set(RESEARCHERS)


@pytest.mark.parametrize("overrides, message", [
    (["researcher.temprature=1"], "researcher.temprature: unknown key; valid keys of researcher (local): name, "
                                  "temperature, learning_rate, grid_points, context_tokens, reward_scale, "
                                  "credit_weight, evidence"),
    (["rounds_=5"], "rounds_: unknown key; valid keys of the campaign: name, rounds, scaffold, runs_dir, seed, "
                    "base_model, baseline_seeds, eval_seeds, reeval_seeds, retrain_seeds, margin, split_size, "
                    "memory_budget_tokens, runner, tracking, live, researcher, approvals"),
    (["runner.memory=8"], "runner.memory: unknown key; valid keys of runner: timeout_s, memory_gb, cache_gb"),
    (["runner.cache_gb=0"], "runner.cache_gb must be > 0, got 0"),
    (["researcher=random", "researcher.temperature=1"],
     "researcher.temperature: unknown key; valid keys of researcher (random): name"),
    (["researcher=openai", "researcher.budget.dollars=3"],
     "researcher.budget.dollars: unknown key; valid keys of researcher.budget: tokens, cost_usd"),
    (["approvals=keep", "approvals.timeout=5"],
     "approvals.timeout: unknown key; valid keys of approvals: name, when, n, timeout_s, default"),
    (["researcher=nope"], "researcher=nope: no such researcher; choose one of cmaes, local, openai, random, scripted, tpe"),
    (["approvals=sometimes"], "approvals=sometimes: no such approvals; choose one of code, every_n, keep, "
                              "keep_and_code, none"),
    (["researcher.name=gpt"], "researcher.name must be one of local, openai, random, scripted, tpe, cmaes, got 'gpt'"),
    (["researcher=scripted"], "researcher.file is required (researcher.file=...)"),
    (["rounds=1e2"], "rounds must be a positive integer, got 100.0 (from rounds=1e2)"),
    (["rounds=ten"], "rounds must be a positive integer, got 'ten'"),
    (["rounds=0"], "rounds must be a positive integer, got 0"),
    (["live=maybe"], "live must be true or false, got 'maybe'"),
    (["approvals.when=[always]"], "approvals.when.0 must be one of 'keep', 'code' or 'every_n', got 'always'"),
    (["researcher.credit_weight=-1"], "researcher.credit_weight must be >= 0"),
    (["name=a/b"], "campaign name 'a/b': use letters, digits"),
    (["retrain_seeds=[0,1]"], "retrain_seeds must be distinct training seeds other than 0, which trains every "
                              "candidate already, got [0, 1] (from retrain_seeds=[0,1])"),
    (["retrain_seeds=[2,2]"], "retrain_seeds must be distinct training seeds other than 0"),
])
def test_bad_overrides_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_numbers_are_read_as_people_type_them():
    config = compose_config(["researcher.learning_rate=1e-5", "researcher.temperature=.5",
                             "researcher.reward_scale=3E-4", "margin=-2", "name=2024"])
    assert config["researcher"]["learning_rate"] == 1e-5 and config["researcher"]["temperature"] == 0.5
    assert config["researcher"]["reward_scale"] == 3e-4 and config["margin"] == -2.0 and config["name"] == "2024"
    assert compose_config(["runner.timeout_s=600"])["runner"] == {"timeout_s": 600, "memory_gb": 16, "cache_gb": None}
    assert compose_config(["runner.cache_gb=20"])["runner"]["cache_gb"] == 20
    openai = compose_config(["researcher=openai", "researcher.budget.tokens=2e6", "researcher.prices.prompt=0.3"])
    assert openai["researcher"]["budget"] == {"tokens": 2e6, "cost_usd": None}


def test_start_shows_the_schema_error_and_creates_nothing(tmp_path, capsys):
    assert main(["start", "name=typo", f"runs_dir={tmp_path}", "researcher.temprature=0.5"]) == 2
    assert ("error: researcher.temprature: unknown key; valid keys of researcher (local): name, temperature, "
            "learning_rate") in one_line_error(capsys)
    assert main(["start", "name=typo", f"runs_dir={tmp_path}", "bogus.key=1"]) == 2
    assert "error: bogus: unknown key; valid keys of the campaign: name, rounds," in one_line_error(capsys)
    assert not (tmp_path / "typo").exists()


def test_a_split_size_the_task_cannot_hold_is_one_error_before_any_pretraining(tmp_path, capsys):
    assert main(["start", "name=big", f"runs_dir={tmp_path}", "split_size=0"]) == 2
    assert "error: split_size must be a positive integer, got 0" in one_line_error(capsys)
    assert main(["start", "name=big", f"runs_dir={tmp_path}", "split_size=1000"]) == 2
    error = one_line_error(capsys)
    assert "error: split_size=1000: arith: found only" in error and "distinct eval problems of 1000" in error
    assert not (tmp_path / "big").exists() and not (tmp_path / "models").exists()  # no campaign, no base
    assert not (tmp_path / "data").exists()  # nor a data folder holding only the failed build's lock


# ---------------------------------------------------------------- frozen configs

@pytest.mark.parametrize("text", [OLD_LOCAL, OLD_OPENAI], ids=["local", "openai"])
def test_a_config_frozen_by_the_previous_version_reads_unchanged(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    config = frozen_config(tmp_path)
    assert (tmp_path / "config.yaml").read_text() == text  # reading writes nothing
    assert config["scaffold"] == "/somewhere/scaffolds/arith"  # as started, never re-resolved
    if config["researcher"]["name"] == "local":
        # A key the old file lacks gets the default the old code used for it (credit_weight 100).
        assert config["researcher"]["credit_weight"] == 100.0 and config["researcher"]["learning_rate"] == 1e-4
        assert config["researcher"]["evidence"] is True  # as before the option: the evidence was always seen
        assert config["approvals"]["when"] == ["keep", "code"] and config["runner"]["timeout_s"] == 900
        assert config["split_size"] == 200  # the eval split it was scored on, not the size new campaigns get
    else:
        assert config["researcher"]["budget"]["tokens"] == 2000000
        assert config["researcher"]["prices"] == {"prompt": 0.3, "completion": 1.2}
        assert (config["seed"], config["rounds"]) == (3, 20)
    # Every value the old file holds comes back with its type (900 stays 900), so that the tracker
    # sees the same params after a resume; the frozen copy reads back as it was frozen.
    assert_kept(yaml.safe_load(text), config)
    (tmp_path / "again").mkdir()
    freeze_config(tmp_path / "again", config)
    assert frozen_config(tmp_path / "again") == config


def test_a_minimal_frozen_config_is_completed_and_a_bad_one_named(tmp_path):
    (tmp_path / "config.yaml").write_text("name: frozen\nrounds: 5\nresearcher:\n  name: random\n")
    config = frozen_config(tmp_path)
    assert config["rounds"] == 5 and config["base_model"] == "runs/models/base"
    assert config["researcher"] == {"name": "random"} and config["approvals"]["name"] == "none"
    (tmp_path / "config.yaml").write_text("name: frozen\nround: 5\n")
    with pytest.raises(ConfigError, match=r"config.yaml: round: unknown key; valid keys of the campaign: name, rounds"):
        frozen_config(tmp_path)
    (tmp_path / "config.yaml").write_text("name: frozen\nseed: [0\n")  # cut short mid-write
    with pytest.raises(ConfigError, match=r"config.yaml: not readable YAML \(while parsing a flow sequence"):
        frozen_config(tmp_path)


def test_resume_merges_only_its_keys_and_types_them():
    config = Campaign.model_validate({"name": "x", "researcher": {"name": "openai"}}).model_dump()
    merged = resumed_config(config, ["rounds=150", "researcher.budget.tokens=4e6", "researcher.budget.cost_usd=.5"],
                            "x")
    assert merged["rounds"] == 150 and merged["researcher"]["budget"] == {"tokens": 4e6, "cost_usd": 0.5}
    assert config["rounds"] == 100  # the config read is not changed
    assert resumed_config(merged, ["researcher.budget.tokens=null"], "x")["researcher"]["budget"]["tokens"] is None
    with pytest.raises(ConfigError, match=r"rounds must be a positive integer, got 150.0 \(from rounds=1.5e2\)"):
        resumed_config(config, ["rounds=1.5e2"], "x")
    with pytest.raises(ValueError, match="resume accepts runs_dir=, rounds= and researcher.budget"):
        resumed_config(config, ["researcher.temperature=0.1"], "x")
    local = Campaign.model_validate({"name": "x"}).model_dump()
    with pytest.raises(ValueError, match="campaign 'x' has no researcher.budget \\(its researcher is 'local'\\)"):
        resumed_config(local, ["researcher.budget.tokens=10"], "x")


def test_resume_writes_the_merged_config_back(tmp_path, capsys):
    camp = tmp_path / "runs" / "frozen"
    camp.mkdir(parents=True)
    (camp / "config.yaml").write_text(OLD_OPENAI)
    # rounds=1e2 is a float: refused before anything is written or run
    assert main(["resume", "frozen", "rounds=1e2", f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert "rounds must be a positive integer, got 100.0 (from rounds=1e2)" in one_line_error(capsys)
    assert (camp / "config.yaml").read_text() == OLD_OPENAI
