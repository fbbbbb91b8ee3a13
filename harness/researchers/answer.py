"""Reading a proposal out of a language model's answer, and the prompt that asks for one.

Real answers are rarely bare JSON: reasoning models (MiniMax M2 among them) put their thinking
in `<think>...</think>` first, chat models wrap the object in a ```json fence or in a sentence,
and small models produce anything at all. `extract_proposal` strips the thinking, then tries the
fenced blocks and every `{` of the text in order, and takes the first JSON object that looks like
a proposal; `parse_proposal` then checks its shape. Every failure is a `ProposalError` whose
message says what was wrong, because it is sent back to the model in the repair request and,
if that fails too, recorded as the round's reason.

    proposal = extract_proposal(answer_text)              # or ProposalError
    messages = proposal_messages(evidence, memory, scaffold_dir, budget_chars=24000)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.analyze import Evidence
from harness.proposal import Proposal, ProposalError, parse_proposal
from harness.researchers.base import move_space, scaffold_knob_space
from rl_pipeline.scaffold import load_scaffold

THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)
QUOTE_CHARS = 120  # of an answer, quoted in an error

SYSTEM = """You are the researcher of a self-optimization campaign. Each round you propose one \
change to an RL training scaffold (a small model learns arithmetic with GRPO); the harness trains \
and evaluates it on fixed data, keeps it only when accuracy improves beyond noise, and shows you \
the outcome in the next round.

Answer with exactly one JSON object and nothing else:
{"hypothesis": "<why this change should raise accuracy>", "edits": [<edit>, ...]}
An edit is either
- a knob edit: {"knob": "<knob name>", "value": <number or string in the knob's range>}, or
- a file edit: {"file": "<editable file>", "search": "<exact text found once in the file>", \
"replace": "<new text>"}, or
- a code move: {"move": "<move name>"}, one of the scaffold's declared patches listed under "Surface".
Only the knobs, files and moves listed under "Surface" may change. A Python file must still compile \
and keep its entry point. Do not repeat a change the memory shows was already refuted."""


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text[:QUOTE_CHARS] + ("..." if len(text) > QUOTE_CHARS else ""))


# ---------------------------------------------------------------------------------------------
# the answer

def strip_thinking(answer: str) -> str:
    """The answer without its `<think>` blocks; an answer cut off inside one has nothing left."""
    text = THINK.sub("", answer)
    if "<think>" in text:
        text = text[:text.index("<think>")]
    return text.strip()


def _objects(text: str):
    """JSON objects in `text`: the fenced blocks first, then one starting at each `{`, in order."""
    decoder = json.JSONDecoder()
    for block in FENCE.findall(text):
        try:
            yield json.loads(block)
        except json.JSONDecodeError:
            continue
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        yield obj


def extract_proposal(answer: str) -> Proposal:
    """The proposal in a model's answer, or a ProposalError that says why there is none."""
    if not answer or not answer.strip():
        raise ProposalError("the answer is empty")
    text = strip_thinking(answer)
    if not text:
        raise ProposalError("the answer has only thinking (<think>...</think>) and no JSON object after it")
    first_error = None
    for obj in _objects(text):
        if not isinstance(obj, dict) or not ({"hypothesis", "edits"} & set(obj)):
            continue  # a fragment, such as one edit inside the proposal: keep looking
        try:
            return parse_proposal(obj)
        except ProposalError as err:
            first_error = first_error or err
    if first_error:
        raise first_error
    raise ProposalError(f"the answer contains no JSON object with 'hypothesis' and 'edits': {_quote(text)}")


# ---------------------------------------------------------------------------------------------
# the prompt

def surface_text(scaffold) -> str:
    """The knobs (current value and range), the editable files and the code moves of a loaded
    scaffold, one line each."""
    specs, current = scaffold_knob_space(scaffold)
    lines = ["knobs (name = current value; allowed values):"]
    for name, spec in sorted(specs.items()):
        allowed = (f"one of {spec['choices']}" if "choices" in spec else
                   f"{spec['type']} in [{spec['min']}, {spec['max']}]" + (" log scale" if spec.get("log") else ""))
        lines.append(f"- {name} = {current.get(name)!r}; {allowed}")
    lines.append("editable files: " + ", ".join(editable_files(scaffold)))
    if scaffold.moves:
        available = move_space(scaffold.path)
        lines.append('code moves ({"move": "<name>"} applies the declared patch; name: what it does):')
        lines += [f"- {name}: {move.doc}" + ("" if name in available else
                                              " (not available now: already applied, or its text was changed)")
                  for name, move in scaffold.moves.items()]
    return "\n".join(lines)


def editable_files(scaffold) -> list[str]:
    return list(scaffold.surface.get("editable_files") or [])


def _fit(text: str, room: int, *, keep: str) -> str:
    """`text` cut to `room` characters, keeping its head or its tail, and saying so."""
    if len(text) <= room:
        return text
    if room <= 40:
        return ""
    marker = "[... cut ...]"
    return text[:room - len(marker)] + marker if keep == "head" else marker + text[-(room - len(marker)):]


def proposal_messages(evidence: Evidence, memory_text: str, scaffold_dir: Path, *, budget_chars: int) -> list[dict]:
    """The chat messages that ask for round `evidence.round`'s proposal, within `budget_chars`.

    What goes in, most important first: the evidence (with the exact reason the last round
    failed, if it did), the surface, the editable files' current text, the memory. When the
    budget is short the memory loses its oldest part first, then the files their tails."""
    scaffold_dir = Path(scaffold_dir)
    scaffold = load_scaffold(scaffold_dir, import_code=False)
    head = f"## Evidence\n{evidence.summary()}\n\n## Surface\n{surface_text(scaffold)}\n"
    tail = f"\nPropose round {evidence.round}: one JSON object only."
    room = budget_chars - len(SYSTEM) - len(head) - len(tail)
    files = [f"### {name}\n```python\n{(scaffold_dir / name).read_text()}```\n" for name in editable_files(scaffold)]
    files_text = "\n## Editable files\n" + "".join(files)
    files_text = _fit(files_text, max(room, 0), keep="head")
    room -= len(files_text)
    memory = _fit(f"\n## Memory\n{memory_text.strip()}\n", max(room, 0), keep="tail") if memory_text.strip() else ""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": head + files_text + memory + tail}]


def repair_messages(messages: list[dict], answer: str, error: str) -> list[dict]:
    """The conversation again, with the bad answer and a request naming what was wrong with it."""
    return [*messages, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer could not be used: {error}\n"
                                        "Answer again with one corrected JSON object only."}]
