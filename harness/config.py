"""The campaign configuration: one typed schema, composed from conf/ and overrides, frozen, read back.

The schema below is the only place a default is written. conf/ holds hydra's group selection
(which researcher, which approval policy) and the policies' presets; hydra composes them with the
command line's overrides, and the schema fills in the defaults, types every value and rejects an
unknown key with the valid names. The result is frozen into the campaign folder as config.yaml,
and `resume`, `report` and `status` read that frozen copy back, validated, without changing it.

    config = compose_config(["name=demo", "rounds=5", "researcher=random"])   # a plain dict
    config = frozen_config(Path("runs/demo"))
    options = parse_config(LocalOptions, {"temperature": 0.5}, "researcher")  # one section alone

Errors are one line (`ConfigError`, a ValueError), e.g.
`researcher.temprature: unknown key; valid keys of researcher (local): name, temperature, ...`.
"""

from __future__ import annotations

import re
import time
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PlainValidator, Tag,
                      ValidationError, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from rl_pipeline.files import write_atomic
from rl_pipeline.manifest import DEFAULT_SIZES

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONFIG_FILE = "config.yaml"


class ConfigError(ValueError):
    """A configuration the schema refuses; the message names the key and what it accepts."""


# ---------------------------------------------------------------------------------------------
# value types whose error says what is wanted

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise PydanticCustomError("positive_int", "must be a positive integer")
    return value


def _limit(value: Any) -> int | float | None:
    if value is not None and not (_is_number(value) and value > 0):
        raise PydanticCustomError("limit", "must be a positive number, or null for no limit")
    return value


def _token_limit(value: Any) -> int | float | None:
    value = _limit(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value  # tokens=2e6: 2000000


def _price(value: Any) -> int | float | None:
    if value is not None and not (_is_number(value) and value >= 0):
        raise PydanticCustomError("price", "must be a number >= 0, or null when not tracked")
    return value


def Number(*, gt: float | None = None, ge: float | None = None, le: float | None = None):
    """The type of a number kept as written (900 stays 900, as in configs frozen before this schema),
    within the given bounds."""
    def check(value: Any) -> int | float:
        if not _is_number(value):
            raise PydanticCustomError("number", "must be a number")
        if gt is not None and not value > gt:
            raise PydanticCustomError("bound", f"must be > {gt}")
        if ge is not None and not value >= ge:
            raise PydanticCustomError("bound", f"must be >= {ge}")
        if le is not None and not value <= le:
            raise PydanticCustomError("bound", f"must be <= {le}")
        return value
    return Annotated[int | float, PlainValidator(check)]


PositiveInt = Annotated[int, PlainValidator(_positive_int)]
Limit = Annotated[int | float | None, PlainValidator(_limit)]
TokenLimit = Annotated[int | float | None, PlainValidator(_token_limit)]
Price = Annotated[int | float | None, PlainValidator(_price)]
# hydra reads `name=2024` as a number; a campaign name is text either way.
Name = Annotated[str | None, BeforeValidator(lambda v: str(v) if _is_number(v) else v)]


class Section(BaseModel):
    """A config section: unknown keys refused, values not coerced (`rounds: 1e2` is not 100)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------------------------------------
# researchers (conf/researcher/<name>.yaml selects one; `researcher.KEY=VALUE` sets an option)

class LocalOptions(Section):
    """The local MoE policy proposes, decoded under the scaffold's surface as a grammar, and learns online."""

    name: Literal["local"] = "local"
    temperature: Number(gt=0) = Field(1.0, description="its sampling over the grammar")
    learning_rate: Number(ge=0) = Field(1e-4, description="its REINFORCE step")
    grid_points: PositiveInt = Field(7, description="values proposed across a knob's range")
    context_tokens: PositiveInt = Field(768, description="the prompt, at most (old memory is cut first)")
    reward_scale: Number() = Field(10.0, description="accuracy delta -> REINFORCE reward, before clipping to [-1, 1]")
    credit_weight: Number(ge=0) = Field(100.0, description=(
        "nats of preference per unit of accuracy gain the credit model predicts; 0 leaves the choice to the model"))
    evidence: bool = Field(True, description=(
        "false blanks the evidence: no summary in the prompt, a zero context for the credit model and no near "
        "miss by a cut failure rate (an ablation)"))
    stack: Number(ge=0, le=1) = Field(1.0, description=(
        "how readily a proposal adds its edit to an earlier near miss (a gain not kept, or a cut failure "
        "rate); 0: one edit a round"))
    companions: bool = Field(True, description=(
        "a change to training comes with a companion per decoder the scaffold declares (surface `decoders`): "
        "the same edits under that decoder, the policy trained once; false: one candidate a round"))
    interior_first: bool = Field(True, description=(
        "a numeric knob not yet tried in the campaign is offered inside its range only, never at its min or "
        "max; false: every grid value from the start"))


class Budget(Section):
    tokens: TokenLimit = Field(None, description="prompt + completion tokens for the whole campaign; null: no limit")
    cost_usd: Limit = Field(None, description="needs prices; null: no limit")


class Prices(Section):
    """USD per million tokens; null: cost is not tracked."""

    prompt: Price = None
    completion: Price = None


class OpenAIOptions(Section):
    """Any OpenAI-compatible chat endpoint proposes knob and code edits. The key is read from the
    environment variable named by api_key_env, never stored in the config."""

    name: Literal["openai"] = "openai"
    base_url: str = Field("http://127.0.0.1:8000/v1", min_length=1)
    model: str | None = Field(None, description="null: the first model the endpoint lists")
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: Number(ge=0) = 0.7
    top_p: Number(gt=0, le=1) = 1.0
    max_tokens: PositiveInt = 1024
    seed: int | None = Field(None, description="null: derived from the campaign's seed and the round")
    timeout_s: Number(gt=0) = 120
    max_retries: int = Field(4, ge=0, description="connection errors, timeouts, 429 and 5xx, with backoff")
    context_chars: PositiveInt = Field(24000, description="the prompt's size at most; the memory is cut first")
    critique: bool = Field(True, description="the same model writes a critique of each round")
    critique_max_tokens: PositiveInt = 256
    budget: Budget = Budget()
    prices: Prices = Prices()


class RandomOptions(Section):
    """Random baseline: one knob a round (a uniform, log-uniform where marked, value in its range) or one code move."""

    name: Literal["random"] = "random"


class ScriptedOptions(Section):
    """Replays proposals from a JSONL file, one per line (round n uses line n)."""

    name: Literal["scripted"] = "scripted"
    file: str = Field(min_length=1, description="the proposals file")


class TPEOptions(Section):
    """Optuna's TPE sampler over the surface's knobs (ask-and-tell; the study is researcher/optuna.db)."""

    name: Literal["tpe"] = "tpe"
    n_startup_trials: PositiveInt = Field(10, description="random trials before the sampler's model is used")


class CMAESOptions(Section):
    """Optuna's CMA-ES sampler over the surface's numeric knobs (choices are sampled independently)."""

    name: Literal["cmaes"] = "cmaes"
    n_startup_trials: PositiveInt = Field(10, description="random trials before the evolution strategy starts")


# The researchers that propose several distinct candidates a round (`Researcher.propose_many`).
MANY_CANDIDATES = ("local", "random", "tpe", "cmaes", "scripted")


def companions(researcher: BaseModel | dict) -> bool:
    """Whether a researcher pairs a change to training with decoder companions (the local one, by
    default): its rounds may then hold two candidates, so the campaign runs them as several."""
    options = researcher if isinstance(researcher, dict) else researcher.model_dump()
    return options.get("name") == "local" and options["companions"]


RESEARCHERS: dict[str, type[Section]] = {"local": LocalOptions, "openai": OpenAIOptions, "random": RandomOptions,
                                          "scripted": ScriptedOptions, "tpe": TPEOptions, "cmaes": CMAESOptions}
ResearcherOptions = Annotated[LocalOptions | OpenAIOptions | RandomOptions | ScriptedOptions | TPEOptions
                              | CMAESOptions, Field(discriminator="name")]


# ---------------------------------------------------------------------------------------------
# approvals (conf/approvals/<name>.yaml: the presets none, keep, code, every_n, keep_and_code)

class Approvals(Section):
    """When a person is asked: before a keep, before running a code edit, every n-th proposal."""

    name: str = "custom"
    when: list[Literal["keep", "code", "every_n"]] = []
    n: PositiveInt = Field(10, description="every_n asks at rounds n, 2n, ...")
    timeout_s: Number(gt=0) = Field(3600, description="how long a non-interactive run waits for `researcher approve`")
    default: Literal["approve", "reject"] = Field("reject", description="applied when nobody answers in time")


# ---------------------------------------------------------------------------------------------
# the campaign

class Runner(Section):
    """`runner=local` (the default): the sandboxed child on this machine that evaluates one candidate
    at a time (rl_pipeline/run.py)."""

    timeout_s: Number(gt=0) = Field(900, description="wall-clock limit of one evaluation, training included")
    memory_gb: Number(gt=0) = Field(16, description="address-space limit of the child")
    cache_gb: Number(gt=0) | None = Field(None, description=(
        "the training cache (<runs_dir>/cache/train) at most this many GiB: after a new policy is cached, the "
        "least recently used are deleted (never one used in the last hour); null: no limit"))


class RayRunner(Runner):
    """`runner=ray`: a round's candidates evaluated at once as Ray actors with resource requests, each
    running the same sandboxed child (harness/ray_runner.py). A cluster joined by address must see
    the project and the runs folder at the same paths as this machine (a shared file system)."""

    name: Literal["ray"] = "ray"
    address: str | None = Field(None, description=(
        "null: start a local Ray bound to 127.0.0.1, sized to this machine; 'auto' or 'ray://HOST:PORT': join it"))
    workers: PositiveInt | None = Field(None, description="evaluations at once; null: the cluster's CPUs / cpus")
    cpus: PositiveInt = Field(1, description="CPUs requested per candidate, also its torch threads")
    gpus: Number(ge=0) = Field(0, description="GPUs requested per candidate")
    fill: bool = Field(False, description=(
        "where a round may hold several candidates (candidates_per_round > 1, or the local researcher's "
        "companions): sampling-only candidates fill the workers a round's training leaves idle "
        "(harness/fill.py); conf/runner/ray.yaml turns it on for new campaigns"))


RUNNERS: dict[str, type[Section]] = {"local": Runner, "ray": RayRunner}


def _runner_kind(value: Any) -> str:
    """The runner a section describes: its `name`, and the local one when it names none (as configs
    frozen before `runner=ray` existed, and `conf/runner/local.yaml`, do)."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return name or "local"


RunnerOptions = Annotated[Annotated[Runner, Tag("local")] | Annotated[RayRunner, Tag("ray")],
                          Discriminator(_runner_kind)]


class Tracking(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="null: sqlite:///<runs_dir>/mlflow.db; MLFLOW_TRACKING_URI overrides")


class Campaign(Section):
    """A self-optimization campaign: `researcher start name=x rounds=5 researcher=random`."""

    name: Name = Field(None, description="null: a timestamp")
    rounds: PositiveInt = 100
    scaffold: str = Field("arith", description="a folder under scaffolds/, or a path")
    runs_dir: str = "runs"
    seed: int = 0
    base_model: str | None = Field(None, description="null: <runs_dir>/models/base")
    baseline_seeds: list[int] = Field([0, 1, 2, 3, 4, 5], description="the initial scaffold, also the noise floor")
    eval_seeds: list[int] = Field([0, 1, 2], description="every candidate")
    reeval_seeds: list[int] = Field([3, 4, 5], description="a promising but uncertain candidate gets these too")
    retrain_seeds: list[int] = Field([1, 2], description=(
        "fresh training seeds a change to training is re-trained with, the incumbent too, before a keep: it is "
        "kept only if the paired gain averaged over these and the first training seed (0) still clears the "
        "margin; [] disables the check"))
    margin: Number() = Field(0.0, description="keep only if the CI's lower bound of the gain is above this")
    split_size: PositiveInt = Field(DEFAULT_SIZES["eval"], description=(
        "problems in the eval split every candidate is scored on, and in held-out (at 200 eval cannot tell apart "
        "recipes 2-3 points apart that 800 can; a size the task cannot hold fails at the start)"))
    memory_budget_tokens: PositiveInt = Field(600, description="the rendered memory the researcher sees")
    runner: RunnerOptions = Runner()
    tracking: Tracking = Tracking()
    live: bool = True
    researcher: ResearcherOptions = LocalOptions()
    approvals: Approvals = Approvals(name="none")
    candidates_per_round: PositiveInt = Field(1, description=(
        "edits proposed and evaluated a round; above 1, the best of them is re-tested on fresh seeds before a keep"))
    heldout_beside: bool | None = Field(None, description=(
        "score a keep on held-out beside the next round's evaluations, not before its record (held-out decides "
        "nothing); null: when the runner evaluates several at once (runner=ray with more than one worker)"))

    @field_validator("retrain_seeds")
    @classmethod
    def _fresh_retrain_seeds(cls, seeds: list[int]) -> list[int]:
        if 0 in seeds or len(set(seeds)) != len(seeds):
            raise PydanticCustomError("fresh_seeds", "must be distinct training seeds other than 0, which trains "
                                      "every candidate already")
        return seeds

    @model_validator(mode="after")
    def _base_model(self) -> Campaign:
        if self.base_model is None:
            self.base_model = f"{self.runs_dir}/models/base"
        return self

    @model_validator(mode="after")
    def _several_candidates(self) -> Campaign:
        """Several candidates a round need a researcher that proposes several, and fresh seeds to
        re-test the best of them on (seeds it was chosen on would keep the luck that chose it)."""
        several = self.candidates_per_round > 1
        if not several and not companions(self.researcher):
            return self
        if several and self.researcher.name not in MANY_CANDIDATES:
            raise PydanticCustomError("rule", f"candidates_per_round > 1 needs researcher "
                                      f"{', '.join(MANY_CANDIDATES)}; {self.researcher.name} proposes one a round")
        if not self.reeval_seeds or set(self.reeval_seeds) & set(self.eval_seeds):
            who, why = (("candidates_per_round > 1", "the best candidate is re-tested on them before a keep")
                        if several else
                        ("researcher.companions", "the better of a proposal and its companion is re-tested on them "
                         "before a keep (or set researcher.companions=false)"))
            raise PydanticCustomError("rule", f"{who} needs reeval_seeds, none of them in eval_seeds: {why}")
        return self


# ---------------------------------------------------------------------------------------------
# errors: one line naming the key and what it accepts

_WANTED = {"int_type": "must be an integer", "float_type": "must be a number", "bool_type": "must be true or false",
           "string_type": "must be a string", "list_type": "must be a list", "model_type": "must be a mapping",
           "dict_type": "must be a mapping", "model_attributes_type": "must be a mapping",
           "none_required": "must be null"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


# The sections chosen by a tag (conf/ groups): a validation error's location names the tag after the key.
UNIONS: dict[str, dict[str, type[Section]]] = {"researcher": RESEARCHERS, "runner": RUNNERS}


def _union(annotation: Any) -> dict[str, type[Section]] | None:
    """The tagged union (one of UNIONS) an annotation is, or None."""
    members = {typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a for a in typing.get_args(annotation)}
    return next((union for union in UNIONS.values() if members == set(union.values())), None)


def _model_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, list[str]]:
    """Walk `loc` (pydantic's error location) through the schema: the model it ends in (None past
    the models), and the path as a user writes it (a tagged union's tag dropped)."""
    path: list[str] = []
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            path.append(str(part))
            current = current.model_fields[part].annotation
            current = _union(current) or current  # a tagged union: its tag follows
        elif isinstance(current, dict) and part in current:
            current = current[part]
        else:
            path.append(str(part))
            current = None
    return (current if isinstance(current, type) and issubclass(current, BaseModel) else None), path


def _describe(error: dict, model: type[BaseModel], prefix: str, typed: dict[str, str]) -> str:
    loc = tuple(error["loc"])
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        parent, path = _model_at(model, loc[:-1])
        owner = ".".join([prefix, *path] if prefix else path) or "the campaign"
        if any(parent in union.values() for union in UNIONS.values()) and "name" in parent.model_fields:
            owner += f" ({parent.model_fields['name'].default})"  # which researcher's (or runner's) options
        key = ".".join([prefix, *path, str(loc[-1])] if prefix else [*path, str(loc[-1])])
        valid = ", ".join(parent.model_fields) if parent else "none"
        return f"{key}: unknown key; valid keys of {owner}: {valid}"
    if kind == "rule":  # a rule across keys (a model validator): its message names them
        return error["msg"]
    _, path = _model_at(model, loc)
    key = ".".join([prefix, *path] if prefix else path) or "the config"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        name = value.get("name") if isinstance(value, dict) else value
        return f"{key}.name must be one of {', '.join(UNIONS.get(path[-1], RESEARCHERS))}, got {name!r}"
    if kind == "missing":
        return f"{key} is required ({key}=...)"
    if kind in _BOUNDS:
        wanted = f"must be {_BOUNDS[kind]} {next(iter(error['ctx'].values()))}"
    elif kind == "literal_error":
        wanted = f"must be one of {error['ctx']['expected']}"
    elif kind == "string_too_short":
        wanted = "must not be empty"
    else:
        wanted = _WANTED.get(kind, error["msg"])
    typed_as = f" (from {key}={typed[key]})" if key in typed and str(value) != typed[key] else ""
    return f"{key} {wanted}, got {value!r}{typed_as}"


def parse_config(model: type[Section], data: Any, prefix: str = "", typed: dict[str, str] | None = None):
    """`data` validated by `model` (defaults filled in), or a ConfigError naming the key; `prefix`
    is where the section sits in the campaign ("researcher"), `typed` the text each key was typed as."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(e, model, prefix, typed or {}) for e in err.errors())) from None


def campaign_config(data: dict, typed: dict[str, str] | None = None) -> dict:
    """A campaign config, validated and completed with the defaults, as plain containers."""
    return parse_config(Campaign, data, typed=typed).model_dump()


# ---------------------------------------------------------------------------------------------
# compose, freeze, read back

def _groups() -> dict[str, list[str]]:
    """conf/'s config groups and their options: {"researcher": ["local", ...], ...}."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(CONF.iterdir()) if d.is_dir()}


def _hydra_overrides(overrides: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Group choices pass as they are; a value override is force-added (`++key=value`), so that the
    schema, not hydra, judges its key: a default need not be repeated in conf/ to be overridable."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.startswith(("+", "~")):
            out.append(item)
        elif key in groups:
            if value not in groups[key]:
                raise ConfigError(f"{item}: no such {key}; choose one of {', '.join(groups[key])}")
            out.append(item)
        else:
            out.append(f"++{item}")
    return out


def compose_config(overrides: list[str]) -> dict:
    """The campaign config from conf/ and `key=value` overrides, validated, as plain containers."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name="campaign", overrides=_hydra_overrides(overrides, _groups()))
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"bad configuration: {err}".splitlines()[0]) from err
    typed = {k.lstrip("+"): v for k, _, v in (o.partition("=") for o in overrides)}
    config = campaign_config(data, typed)
    config["name"] = config["name"] or time.strftime("c-%Y%m%d-%H%M%S")
    if not NAME.match(config["name"]):
        raise ConfigError(f"campaign name {config['name']!r}: use letters, digits, '_', '.', '-' (max 64)")
    config["scaffold"] = str(scaffold_path(config["scaffold"]))
    return config


def scaffold_path(value: str) -> Path:
    """A scaffold folder: a path, or the name of a folder under scaffolds/."""
    for candidate in (Path(value), REPO / "scaffolds" / value):
        if (candidate / "scaffold.yaml").is_file():
            return candidate.resolve()
    raise ValueError(f"scaffold {value!r} not found (a folder under scaffolds/ or a path to one)")


def data_dir(config: dict) -> Path:
    """The folder of the splits a campaign's base is pretrained on and its runs are scored on:
    `<runs_dir>/data`, where the splits of each size have a folder of their own
    (`rl_pipeline.manifest.splits_folder`; the training split is the same at every size)."""
    return Path(config["runs_dir"]) / "data"


def frozen_config(path: Path) -> dict:
    """The config a campaign was started with, as frozen in its folder, validated and completed
    with today's defaults (a campaign frozen by an older version reads the same); nothing is written."""
    file = Path(path) / CONFIG_FILE
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not readable YAML ({' '.join(str(err).split())})") from None
    try:
        return campaign_config(data or {})
    except ConfigError as err:
        raise ConfigError(f"{file}: {err}") from None


def freeze_config(path: Path, config: dict) -> None:
    """Write `config`, validated, as the campaign's frozen config."""
    write_atomic(Path(path) / CONFIG_FILE, yaml.safe_dump(campaign_config(config), sort_keys=False))
