"""Load a scaffold folder and check it against its surface.

A scaffold is `scaffold.yaml` (knobs), `surface.yaml` (what may change and every knob's range),
`prompt.py` (`format_prompt(question) -> str`) and `reward.py` (`rewards(completions, examples,
scores, weights) -> list[float]`); optionally `data.py` (`training_examples(examples, rng) -> list`:
which training examples GRPO meets, in which order; without it, TRL's shuffle of them all) and
`moves.yaml`, its library of code moves: named, documented search/replace patches of its editable
files that any researcher may propose, each optionally naming the failure categories it `targets` (a
hint for a researcher, never a rule). The surface also fixes the training budget
(`budget.train_completions`: GRPO trains on that many completions, whatever the knobs), and may name
`decoders`: sampling settings under which a changed training recipe is also scored (a recipe can pay
off under another decoder than the incumbent's; a researcher pairs such a proposal with a companion
per decoder). Loading checks every knob's type and range, the budget, the decoders and every move's
shape and targets, imports the Python files from their paths (never from `sys.path`), and hashes the
whole content, so a result can name exactly what it measured.

    scaffold = load_scaffold("scaffolds/arith", overrides={"sampling.temperature": 0.7})
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML, YAMLError

from rl_pipeline.tasks import CATEGORIES

REWARD_FILE = "reward.py"  # used by GRPO alone: the evaluator scores with the fixed scorer
REQUIRED_FILES = ("scaffold.yaml", "surface.yaml", "prompt.py", REWARD_FILE)
DATA_FILE = "data.py"  # optional: the training examples GRPO meets and their order
MOVES_FILE = "moves.yaml"
FAILURE_CATEGORIES = tuple(c for c in CATEGORIES if c != "correct")  # what a move's `targets` may name
SECTIONS = ("sampling", "grpo", "reward")


class ScaffoldError(ValueError):
    """A scaffold that cannot be run as it is: the message names the file or knob and the problem."""


@dataclass(frozen=True)
class Patch:
    """One search/replace on one editable file: a patch of a code move, or a free file edit (`FileEdit`)."""

    file: str
    search: str
    replace: str


@dataclass(frozen=True)
class Move:
    """A named code move: `doc` says in one line what it does and why it might help; `targets` names
    the failure categories (rl_pipeline.tasks.CATEGORIES) it means to reduce, if the scaffold says."""

    name: str
    doc: str
    patches: tuple[Patch, ...]
    targets: tuple[str, ...] = ()

    @property
    def shapes_reward(self) -> bool:
        """Whether the move patches reward.py alone: it changes what training optimizes, nothing else."""
        return all(patch.file == REWARD_FILE for patch in self.patches)


@dataclass
class Scaffold:
    path: Path
    config: dict
    surface: dict
    content_hash: str
    moves: dict[str, Move] = field(default_factory=dict)
    prompt: ModuleType | None = field(default=None, repr=False)
    reward: ModuleType | None = field(default=None, repr=False)
    data: ModuleType | None = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return self.config["task"]

    def reward_edits(self) -> tuple[set[str], set[str]]:
        """The knobs and the moves that change the reward alone: what training optimizes, nothing
        else (a reward edit can matter only where training moves the policy)."""
        knobs = set(self.knobs()) | set(self.surface.get("knobs") or {})
        return ({k for k in knobs if k.startswith("reward.")},
                {name for name, move in self.moves.items() if move.shapes_reward})

    def knob(self, name: str) -> Any:
        section, key = name.split(".", 1)
        return self.config[section][key]

    def knobs(self) -> dict[str, Any]:
        """Every knob as a flat `section.key -> value` mapping."""
        return {f"{s}.{k}": v for s in SECTIONS for k, v in self.config.get(s, {}).items()}

    def training_knobs(self) -> dict[str, Any]:
        """The knobs that change training (GRPO and reward); sampling only changes evaluation."""
        return {k: v for k, v in self.knobs().items() if not k.startswith("sampling.")}

    @property
    def decoders(self) -> list[dict[str, Any]]:
        """The decoders the surface declares (`decoders`), each a `sampling.* knob -> value` mapping."""
        return [dict(d) for d in self.surface.get("decoders") or []]

    @property
    def train_completions(self) -> int:
        """The training budget: completions GRPO trains on, the same whatever the knobs."""
        return self.surface["budget"]["train_completions"]


def read_yaml_text(text: str) -> Any:
    """YAML `text` under YAML 1.2's rules (ruamel.yaml), the rules people type by: 1e-5, 3E-4 and .5
    are numbers (YAML 1.1, PyYAML's, reads 1e-5 as a string), yes/no/on/off are strings."""
    return copy.deepcopy(_read_yaml_cached(text))


@functools.lru_cache(maxsize=256)
def _read_yaml_cached(text: str) -> Any:
    # Validating a proposal reads the same surface.yaml and scaffold.yaml many times (the local
    # researcher checks every grid edit), and the pure-Python parser is the slow part of it.
    return YAML(typ="safe", pure=True).load(text)


def parse_value(text: str) -> Any:
    """A value as a user or a model types it: "1e-5" -> 1e-05, ".5" -> 0.5, "-2" -> -2, "dapo" -> "dapo"."""
    try:
        return read_yaml_text(text)
    except YAMLError:
        return text


def _read_yaml(path: Path) -> dict:
    try:
        data = read_yaml_text(path.read_text())
    except YAMLError as err:
        raise ScaffoldError(f"{path.name}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ScaffoldError(f"{path.name}: expected a mapping at the top level")
    return data


def check_knob(name: str, value: Any, spec: dict) -> Any:
    """`value` converted to the knob's type, or a ScaffoldError saying why it is not allowed."""
    kind = spec.get("type")
    if kind in ("float", "int") and isinstance(value, str):  # "1e-5", typed on a command line or by a model
        value = parse_value(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScaffoldError(f"knob {name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ScaffoldError(f"knob {name}: {value} is not finite")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) and not (
                isinstance(value, float) and value.is_integer()):
            raise ScaffoldError(f"knob {name}: expected an integer, got {value!r}")
        value = int(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise ScaffoldError(f"knob {name}: expected a string, got {value!r}")
    else:
        raise ScaffoldError(f"surface.yaml: knob {name} has unknown type {kind!r}")
    if "choices" in spec and value not in spec["choices"]:
        raise ScaffoldError(f"knob {name}: {value!r} is not one of {spec['choices']}")
    if "min" in spec and value < spec["min"]:
        raise ScaffoldError(f"knob {name}: {value!r} is below the minimum {spec['min']}")
    if "max" in spec and value > spec["max"]:
        raise ScaffoldError(f"knob {name}: {value!r} is above the maximum {spec['max']}")
    return value


def _check_config(config: dict, surface: dict) -> None:
    knobs = surface.get("knobs") or {}
    for section in SECTIONS:
        if not isinstance(config.get(section), dict):
            raise ScaffoldError(f"scaffold.yaml: missing section {section!r}")
        for key, value in config[section].items():
            name = f"{section}.{key}"
            if name not in knobs:
                raise ScaffoldError(f"scaffold.yaml: knob {name} is not declared in surface.yaml")
            config[section][key] = check_knob(name, value, knobs[name])
    missing = [name for name in knobs if name.split(".", 1)[1] not in config[name.split(".", 1)[0]]]
    if missing:
        raise ScaffoldError(f"scaffold.yaml: knobs declared in surface.yaml but missing: {', '.join(missing)}")
    grpo = config["grpo"]
    if grpo["per_device_train_batch_size"] % grpo["num_generations"]:
        raise ScaffoldError(
            f"knob grpo.per_device_train_batch_size={grpo['per_device_train_batch_size']} must be a multiple "
            f"of grpo.num_generations={grpo['num_generations']}")


class _BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    train_completions: int = Field(gt=0)


def _check_budget(surface: dict) -> None:
    try:
        _BudgetIn.model_validate(surface.get("budget"))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(['budget', *map(str, e['loc'])])}: {e['msg']}" for e in err.errors())
        raise ScaffoldError(f"surface.yaml: {problems}; the training budget is "
                            "`budget: {train_completions: N}`, the completions GRPO trains on") from None


def _check_decoders(surface: dict) -> None:
    """`decoders`: a list of non-empty mappings, each of `sampling.*` knobs of the surface to values in
    their ranges (checked and stored as the knob's type)."""
    decoders, knobs = surface.get("decoders"), surface.get("knobs") or {}
    if decoders is None:
        return
    if not isinstance(decoders, list):
        raise ScaffoldError("surface.yaml: decoders must be a list of {sampling knob: value} mappings")
    for i, decoder in enumerate(decoders):
        if not isinstance(decoder, dict) or not decoder:
            raise ScaffoldError(f"surface.yaml: decoder {i} must be a non-empty {{sampling knob: value}} mapping, "
                                f"got {decoder!r}")
        for name in decoder:
            if not str(name).startswith("sampling.") or name not in knobs:
                raise ScaffoldError(f"surface.yaml: decoder {i} sets {name!r}; a decoder sets sampling knobs of the "
                                    f"surface: {', '.join(k for k in knobs if k.startswith('sampling.'))}")
            decoder[name] = check_knob(name, decoder[name], knobs[name])


class _PatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    file: str = Field(min_length=1)
    search: str = Field(min_length=1)
    replace: str


class _MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    doc: str = Field(pattern=r"^[^\n]*\S[^\n]*$")  # one non-blank line
    patches: list[_PatchIn] = Field(min_length=1)
    targets: list[Literal[FAILURE_CATEGORIES]] = []


def _load_moves(path: Path, surface: dict) -> dict[str, Move]:
    """The moves declared in `moves.yaml` (none without the file), each patch on an editable file."""
    if not (path / MOVES_FILE).is_file():
        return {}
    data = _read_yaml(path / MOVES_FILE)
    editable = [str(PurePosixPath(p)) for p in surface.get("editable_files") or []]
    moves = {}
    for name, raw in data.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ScaffoldError(f"{MOVES_FILE}: move name {name!r} must be lowercase letters, digits and "
                                "underscores, starting with a letter")
        try:
            move = _MoveIn.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the move"
            raise ScaffoldError(f"{MOVES_FILE}: move {name}: {where}: {first['msg']}") from None
        for i, patch in enumerate(move.patches):
            if str(PurePosixPath(patch.file)) not in editable:
                raise ScaffoldError(f"{MOVES_FILE}: move {name}: patch {i} targets {patch.file!r}, which is not "
                                    f"an editable file; editable files are: {', '.join(editable) or 'none'}")
            if patch.search == patch.replace:
                raise ScaffoldError(f"{MOVES_FILE}: move {name}: patch {i} replaces its search text with itself")
        moves[name] = Move(name, move.doc, tuple(Patch(str(PurePosixPath(p.file)), p.search, p.replace)
                                                 for p in move.patches), tuple(move.targets))
    return moves


def content_hash(path: Path) -> str:
    """sha256 over the scaffold's files (names and bytes), ignoring caches and git metadata."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.parts[0] in (".git", "__pycache__") or file.suffix == ".pyc":
            continue
        digest.update(str(rel).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def import_file(path: Path, name: str) -> ModuleType:
    """Import one Python file by path; a syntax error or an exception on import is a ScaffoldError."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ScaffoldError(f"{path.name}: syntax error on line {err.lineno}: {err.msg}") from err
    except Exception as err:
        raise ScaffoldError(f"{path.name}: raised {type(err).__name__} on import: {err}") from err
    return module


def load_scaffold(path: str | Path, overrides: dict[str, Any] | None = None, *,
                  import_code: bool = True) -> Scaffold:
    """Read, override and validate a scaffold; with `import_code`, import its prompt, reward and
    data selection (where it has one)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ScaffoldError(f"scaffold folder {str(path)!r} does not exist")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ScaffoldError(f"scaffold {path.name}: missing file {name}")
    config = _read_yaml(path / "scaffold.yaml")
    surface = _read_yaml(path / "surface.yaml")
    if "task" not in config:
        raise ScaffoldError("scaffold.yaml: missing 'task'")
    config = copy.deepcopy(config)
    for name, value in (overrides or {}).items():
        section, _, key = name.partition(".")
        if section not in SECTIONS or not key or key not in config.get(section, {}):
            raise ScaffoldError(f"unknown knob {name!r}; knobs are: {', '.join(sorted(surface.get('knobs', {})))}")
        config[section][key] = value
    _check_config(config, surface)
    _check_budget(surface)
    _check_decoders(surface)
    scaffold = Scaffold(path=path, config=config, surface=surface, content_hash=content_hash(path),
                        moves=_load_moves(path, surface))
    if import_code:
        scaffold.prompt = import_file(path / "prompt.py", f"scaffold_prompt_{scaffold.content_hash[:8]}")
        scaffold.reward = import_file(path / "reward.py", f"scaffold_reward_{scaffold.content_hash[:8]}")
        checks = [(scaffold.prompt, "format_prompt"), (scaffold.reward, "rewards")]
        if (path / DATA_FILE).is_file():
            scaffold.data = import_file(path / DATA_FILE, f"scaffold_data_{scaffold.content_hash[:8]}")
            checks.append((scaffold.data, "training_examples"))
        for module, attr in checks:
            if not callable(getattr(module, attr, None)):
                raise ScaffoldError(f"{Path(module.__file__).name}: no function {attr}()")
    return scaffold


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["sampling.temperature=0.7", "grpo.learning_rate=1e-5"]` -> `{"sampling.temperature": 0.7,
    "grpo.learning_rate": 1e-05}` (values read as typed, by `parse_value`)."""
    overrides = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ScaffoldError(f"override {item!r} is not of the form knob=value")
        overrides[name.strip()] = parse_value(raw)
    return overrides
