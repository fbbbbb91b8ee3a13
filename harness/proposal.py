"""Proposals: what a researcher asks to change in a scaffold, parsed and checked before any write.

A proposal is JSON `{"hypothesis": str, "edits": [...]}`; an edit is a knob edit
`{"knob": "sampling.temperature", "value": 0.7}`, a file edit
`{"file": "reward.py", "search": "exact old text", "replace": "new text"}`, or a code move
`{"move": "reward_partial_credit"}`, one of the scaffold's declared moves (`moves.yaml`), which
expands into its file edits and is checked exactly as they would be.

`parse_proposal` checks the shape; `validate` checks it against a scaffold's surface (knob ranges,
editable files, safe paths, search text found exactly once, Python that still compiles, a scaffold
that still loads) without writing to the scaffold; `render` does the same and returns the new file
contents, which is what the workspace writes. Every rejection is a `ProposalError` whose message
names the edit and the reason, because it is fed back to the researcher as evidence.

    proposal = parse_proposal('{"hypothesis": "cooler sampling", "edits": [{"knob": "sampling.temperature", "value": 0.7}]}')
    new_files = render(proposal, "runs/demo/scaffold")   # {"scaffold.yaml": "..."}
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from rl_pipeline.scaffold import Patch, ScaffoldError, check_knob, load_scaffold, read_yaml_text

# The entry points the runner calls in a scaffold's code, checked statically (never imported here).
REQUIRED_FUNCTIONS = {"prompt.py": "format_prompt", "reward.py": "rewards"}

CONFIG_FILE = "scaffold.yaml"
SURFACE_FILE = "surface.yaml"
_PREFIX = 40  # characters of a search text quoted in an error


class ProposalError(ValueError):
    """A proposal that cannot be applied; `index` is the offending edit, None for the whole proposal."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message if index is None else f"edit {index}: {message}")
        self.index = index


@dataclass(frozen=True)
class KnobEdit:
    knob: str
    value: float | int | str


# A free file edit is the same search/replace as one patch of a scaffold's code move.
FileEdit = Patch


@dataclass(frozen=True)
class MoveEdit:
    move: str


Edit = KnobEdit | FileEdit | MoveEdit


@dataclass(frozen=True)
class Proposal:
    hypothesis: str
    edits: tuple[Edit, ...]

    @property
    def kind(self) -> str:
        """Either "knob" (knob edits only) or "code" (at least one file edit or code move)."""
        return "knob" if all(isinstance(e, KnobEdit) for e in self.edits) else "code"

    def to_dict(self) -> dict:
        return {"hypothesis": self.hypothesis, "edits": [asdict(e) for e in self.edits]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @property
    def edits_key(self) -> str:
        """The edits alone as one string: two proposals that change the same things, in whatever words."""
        return json.dumps([asdict(e) for e in self.edits], sort_keys=True)


# ---------------------------------------------------------------------------------------------
# parsing: the shape of the JSON, nothing about the scaffold, by pydantic models

class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _KnobEditIn(_Shape):
    knob: str = Field(min_length=1)
    value: int | float | str  # a string for a numeric knob is read as typed ("1e-5") by check_knob


class _FileEditIn(_Shape):
    file: str = Field(min_length=1)
    search: str = Field(min_length=1)
    replace: str


class _MoveEditIn(_Shape):
    move: str = Field(min_length=1)


MARKERS = ("knob", "file", "move")


def _edit_kind(raw: Any) -> str | None:
    """"knob", "file" or "move" by the edit's marker key; None for none or several: no telling what
    was meant."""
    if isinstance(raw, dict):
        present = [m for m in MARKERS if m in raw]
        if len(present) == 1:
            return present[0]
    return None


class _ProposalIn(_Shape):
    hypothesis: str = Field(pattern=r"\S")
    edits: list[Annotated[Annotated[_KnobEditIn, Tag("knob")] | Annotated[_FileEditIn, Tag("file")]
                          | Annotated[_MoveEditIn, Tag("move")],
                          Discriminator(_edit_kind)]] = Field(min_length=1)


def _keys(keys) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


def _edit_error(errors: list[dict], index: int, raw: Any) -> ProposalError:
    """The first problem of edit `index` as the researcher should read it."""
    kind, loc = errors[0]["type"], errors[0]["loc"]
    if len(loc) == 2:  # the discriminator found no shape
        if not isinstance(raw, dict):
            return ProposalError(f"expected an object, got {type(raw).__name__}", index)
        return ProposalError(f"unknown edit shape with keys [{_keys(raw)}]; expected "
                             "{'knob', 'value'}, {'file', 'search', 'replace'} or {'move'}", index)
    marker, field = loc[2], loc[3]
    if kind == "extra_forbidden":
        extra = {e["loc"][3] for e in errors if e["type"] == kind}
        return ProposalError(f"unexpected key(s) {_keys(extra)} in a {marker} edit", index)
    if kind == "missing":
        missing = {e["loc"][3] for e in errors if e["type"] == kind}
        return ProposalError(f"{marker} edit is missing {_keys(missing)}", index)
    if field == "knob":
        return ProposalError(f"'knob' must be a non-empty string, got {raw['knob']!r}", index)
    if field == "move":
        return ProposalError(f"'move' must be the name of one of the scaffold's moves, got "
                             f"{json.dumps(raw['move'])}", index)
    if field == "value":
        return ProposalError(f"knob {raw['knob']}: 'value' must be a number or a string, "
                             f"got {json.dumps(raw['value'])}", index)
    if kind == "string_too_short":
        return ProposalError(f"'{field}' must not be empty", index)
    return ProposalError(f"'{field}' must be a string, got {type(raw[field]).__name__}", index)


def _proposal_error(err: ValidationError, obj: Any) -> ProposalError:
    """The first problem of a proposal, in the order a reader fixes them: the proposal's own keys,
    then each edit in turn (its shape, unknown keys, missing keys, then values)."""
    rank = {"extra_forbidden": 0, "missing": 1}
    errors = sorted(err.errors(), key=lambda e: (len(e["loc"]) > 1, e["loc"][1:2], rank.get(e["type"], 2)))
    first = errors[0]
    loc, kind = first["loc"], first["type"]
    if not loc:
        return ProposalError(f"proposal must be a JSON object, got {type(obj).__name__}")
    if len(loc) > 1:
        index = loc[1]
        return _edit_error([e for e in errors if e["loc"][:2] == loc[:2]], index, obj["edits"][index])
    if kind == "extra_forbidden":
        extra = {e["loc"][0] for e in errors if e["type"] == kind and len(e["loc"]) == 1}
        return ProposalError(f"unexpected key(s) {_keys(extra)}; a proposal has only 'hypothesis' and 'edits'")
    if kind == "missing":
        return ProposalError(f"proposal is missing '{loc[0]}'")
    if loc[0] == "hypothesis":
        return ProposalError(f"'hypothesis' must be a non-empty string, got {obj['hypothesis']!r}")
    if kind == "too_short":
        return ProposalError("'edits' is empty: a proposal must change something")
    return ProposalError(f"'edits' must be a list, got {type(obj['edits']).__name__}")


def parse_proposal(obj_or_json_text: str | bytes | dict) -> Proposal:
    """A `Proposal` from JSON text or an already-decoded object, or a ProposalError saying why not."""
    obj = obj_or_json_text
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ProposalError(f"proposal is not valid JSON: {err}") from err
    try:
        parsed = _ProposalIn.model_validate(obj)
    except ValidationError as err:
        raise _proposal_error(err, obj) from None
    return Proposal(parsed.hypothesis, tuple(_edit(e) for e in parsed.edits))


def _edit(parsed: _KnobEditIn | _FileEditIn | _MoveEditIn) -> Edit:
    if isinstance(parsed, _KnobEditIn):
        return KnobEdit(parsed.knob, parsed.value)
    if isinstance(parsed, _MoveEditIn):
        return MoveEdit(parsed.move)
    return FileEdit(parsed.file, parsed.search, parsed.replace)


# ---------------------------------------------------------------------------------------------
# paths: an edit may only reach a regular, listed file inside the scaffold folder

def safe_relpath(root: Path, name: str, index: int | None = None) -> str:
    """`name` normalised relative to `root`, or a ProposalError if it could reach anything else."""
    pure = PurePosixPath(name)
    if "\0" in name or "\\" in name:
        raise ProposalError(f"path {name!r} contains a NUL or a backslash", index)
    if pure.is_absolute() or PureWindowsPath(name).drive:
        raise ProposalError(f"path {name!r} is absolute; paths are relative to the scaffold folder", index)
    if "rl_pipeline" in pure.parts:
        raise ProposalError(f"path {name!r} points into rl_pipeline/, which holds the evaluator and is "
                            "never editable", index)
    if ".." in pure.parts:
        raise ProposalError(f"path {name!r} contains '..'; edits stay inside the scaffold folder", index)
    current = root
    for part in pure.parts:
        current = current / part
        # A symlink anywhere on the path could redirect the write, even to a target inside today.
        if current.is_symlink():
            raise ProposalError(f"path {name!r}: {current.relative_to(root)} is a symlink", index)
    if not (root / pure).resolve().is_relative_to(root.resolve()):
        raise ProposalError(f"path {name!r} resolves outside the scaffold folder", index)
    return str(pure)


# ---------------------------------------------------------------------------------------------
# knob edits: one value of scaffold.yaml, through ruamel.yaml's round trip (comments and layout kept)

def _represent_float(representer, value: float):
    """A float as YAML 1.2 writes it, with a dot before any exponent (5.0e-06, not 5e-06), so that
    YAML 1.1 readers (PyYAML) also read a float."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _round_trip() -> YAML:
    yaml_rt = YAML()  # round-trip: comments, key order, flow style and quoting survive a load and dump
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # never re-wrap a long line
    yaml_rt.representer.add_representer(float, _represent_float)
    return yaml_rt


def set_knob(text: str, name: str, value: float | int | str) -> str:
    """scaffold.yaml `text` with knob `section.key` set to `value`; every other line as it was."""
    section, key = name.split(".", 1)
    yaml_rt = _round_trip()
    data = yaml_rt.load(text)
    if not isinstance(data.get(section), dict) or key not in data[section]:
        raise ScaffoldError(f"{CONFIG_FILE}: no key '{key}' under section '{section}:' to edit")
    if isinstance(value, str) and yaml.safe_load(value) != value:  # "yes", "1e-5": quoted, or YAML 1.1 misreads them
        value = DoubleQuotedScalarString(value)
    data[section][key] = value
    out = io.StringIO()
    yaml_rt.dump(data, out)
    return out.getvalue()


def _check_knob_line(before: str, after: str, name: str, value: Any) -> None:
    """The edit changed exactly this knob to this value, and nothing else."""
    expected = read_yaml_text(before)
    section, key = name.split(".", 1)
    expected[section][key] = value
    if read_yaml_text(after) != expected:
        raise ScaffoldError(f"{CONFIG_FILE}: could not set {name} in place (unusual formatting)")


# ---------------------------------------------------------------------------------------------
# render and validate

def _quote(text: str) -> str:
    return repr(text if len(text) <= _PREFIX else text[:_PREFIX] + "...")


def _target(edit: Edit) -> str:
    """What an edit names: its knob, its file's name or its move."""
    if isinstance(edit, KnobEdit):
        return edit.knob
    if isinstance(edit, MoveEdit):
        return edit.move
    return PurePosixPath(edit.file).name


def _blame(proposal: Proposal, message: str) -> int | None:
    """The last edit whose target a load error names, so the researcher knows where to look."""
    named = [i for i, e in enumerate(proposal.edits) if _target(e) in message]
    return named[-1] if named else None


def _apply_edit(root: Path, scaffold, texts: dict[str, str], index: int, edit: Edit) -> list[str]:
    """Apply one edit to the in-memory `texts`; return the files it changed."""
    surface = scaffold.surface
    if isinstance(edit, MoveEdit):
        moves = scaffold.moves
        if edit.move not in moves:
            known = ", ".join(sorted(moves)) or "none (the scaffold declares no moves)"
            raise ProposalError(f"unknown move {edit.move!r}; moves are: {known}", index)
        changed = []
        for patch in moves[edit.move].patches:
            try:
                changed.append(_apply_file_edit(root, surface, texts, None, patch))
            except ProposalError as err:
                raise ProposalError(f"move {edit.move} does not apply to this scaffold (its text was already "
                                    f"changed, by this move or another): {err}", index) from err
        return changed
    if isinstance(edit, KnobEdit):
        knobs = surface.get("knobs") or {}
        if edit.knob not in knobs:
            raise ProposalError(f"unknown knob {edit.knob!r}; knobs are: {', '.join(sorted(knobs))}", index)
        try:
            value = check_knob(edit.knob, edit.value, knobs[edit.knob])
            before = texts[CONFIG_FILE]
            texts[CONFIG_FILE] = set_knob(before, edit.knob, value)
            _check_knob_line(before, texts[CONFIG_FILE], edit.knob, value)
        except ScaffoldError as err:
            raise ProposalError(str(err), index) from err
        return [CONFIG_FILE]
    return [_apply_file_edit(root, surface, texts, index, edit)]


def _apply_file_edit(root: Path, surface: dict, texts: dict[str, str], index: int | None,
                     edit: FileEdit) -> str:
    """Apply one search/replace to the in-memory `texts`; return the file it changed."""
    rel = safe_relpath(root, edit.file, index)
    if rel == SURFACE_FILE:
        raise ProposalError(f"{SURFACE_FILE} defines what may be edited and is never editable itself", index)
    editable = [str(PurePosixPath(p)) for p in surface.get("editable_files") or []]
    if rel not in editable:
        raise ProposalError(f"file {edit.file!r} is not in the surface; editable files are: "
                            f"{', '.join(editable) or 'none'}", index)
    if rel not in texts:
        if not (root / rel).is_file():
            raise ProposalError(f"file {rel!r} does not exist in the scaffold", index)
        try:
            texts[rel] = (root / rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProposalError(f"file {rel!r} is not UTF-8 text", index) from err
    count = texts[rel].count(edit.search)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times; it must match exactly once"
        raise ProposalError(f"{rel}: search text {_quote(edit.search)} {where}", index)
    if edit.replace == edit.search:
        raise ProposalError(f"{rel}: replace is identical to search", index)
    texts[rel] = texts[rel].replace(edit.search, edit.replace)
    return rel


def render(proposal: Proposal, scaffold_dir: str | Path) -> dict[str, str]:
    """Check `proposal` against the scaffold and return `{relative path: new text}` of the files it
    changes. Nothing in `scaffold_dir` is written; a ProposalError says what is wrong."""
    root = Path(scaffold_dir).resolve()
    scaffold = load_scaffold(root, import_code=False)
    texts = {CONFIG_FILE: (root / CONFIG_FILE).read_bytes().decode("utf-8")}
    last_edit: dict[str, int] = {}
    for index, edit in enumerate(proposal.edits):
        for rel in _apply_edit(root, scaffold, texts, index, edit):
            last_edit[rel] = index
    changed = {rel: text for rel, text in texts.items()
               if text != (root / rel).read_bytes().decode("utf-8")}
    if not changed:
        raise ProposalError("the proposal changes nothing: every edit leaves its file as it was")
    for rel, text in changed.items():
        if rel.endswith(".py"):
            try:
                tree = compile(text, rel, "exec", flags=ast.PyCF_ONLY_AST)
            except SyntaxError as err:
                raise ProposalError(f"{rel} does not compile after the edit: line {err.lineno}: {err.msg}",
                                    last_edit[rel]) from err
            required = REQUIRED_FUNCTIONS.get(rel)
            defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            if required and required not in defined:
                raise ProposalError(f"{rel} no longer defines the function {required}() at top level",
                                    last_edit[rel])
    # The whole scaffold must still load (knob types and ranges, cross-knob rules): check a throwaway
    # copy. Its code is compiled above but never imported here: researcher code runs only inside
    # the sandboxed runner, where an import error becomes a failed result.
    with tempfile.TemporaryDirectory(prefix="proposal-") as tmp:
        copy = Path(tmp) / root.name
        shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        for rel, text in changed.items():
            (copy / rel).write_bytes(text.encode("utf-8"))
        try:
            load_scaffold(copy, import_code=False)
        except ScaffoldError as err:
            raise ProposalError(f"the edited scaffold does not load: {err}", _blame(proposal, str(err))) from err
    return changed


def validate(proposal: Proposal, scaffold_dir: str | Path) -> None:
    """Raise a ProposalError unless `proposal` applies cleanly to the scaffold; writes nothing."""
    render(proposal, scaffold_dir)


def available_moves(scaffold_dir: str | Path) -> list[str]:
    """The scaffold's moves that apply to it as it is now, in declaration order: a move already
    applied, or whose text another change has replaced, is not available."""
    available = []
    for name in load_scaffold(scaffold_dir, import_code=False).moves:
        try:
            validate(Proposal(f"move {name}", (MoveEdit(name),)), scaffold_dir)
        except ProposalError:
            continue
        available.append(name)
    return available
