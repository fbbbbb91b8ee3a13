"""Self-critique after a round, and the check that it states no number it was not given.

`critique` writes the round's self-feedback in markdown: what changed, what it did to each metric
(candidate against incumbent on the seeds both ran, so its accuracy change is the paired one of
the verdict), whether that is beyond noise (the interval against the margin), whether it held on
fresh training seeds (when the round re-trained a change to training: the change by training seed
and averaged over them), and what to try next (a few rules: truncation up means fewer tokens, a
helpful change is pushed further, a refuted one gives way to another knob).

`check_critique` extracts every number in a text and returns the ones that match nothing in the
result, the incumbent or the verdict at the precision printed (a percentage is read as a
fraction, seed and example counts and metric differences count as given, and so do 95 and 100,
as in "95% CI"). It works on any text, so a critique written by a model can be checked the same
way; `critique` passes it by construction, and the tests check that on random rounds.

    text = critique(proposal, result, incumbent, verdict.to_dict(), training)  # training: None, or the
    assert check_critique(text, result, incumbent, verdict.to_dict(), training) == []  # retrain step's output
"""

from __future__ import annotations

import math
import re
from typing import Any

from harness.compare import DETERMINISTIC
from harness.proposal import FileEdit, KnobEdit, MoveEdit, Proposal

METRICS = ("accuracy", "format_valid_rate", "truncation_rate", "repetition_rate", "mean_completion_tokens")
DIGITS = {"mean_completion_tokens": 2}  # decimals printed; rates get 3
# Moves smaller than these are "no change" for the advice; they are never printed.
RATE_MOVE = 0.01
POOLED = " (eval's and the calibration split's: every seed gave the same answers, so more examples, not seeds)"
REASON_CHARS = 200
CONSTANTS = (95.0, 100.0)  # the interval's level and the percent base

# A number on its own: not the digit of a name ("top_k2", "v1") nor glued to a letter ("3rd").
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?![A-Za-z_\d])")


# ---------------------------------------------------------------------------------------------
# writing

def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"  # 1.0 reads as a float, not 1
    return str(value)


def _metric(name: str, value: float, signed: bool = False) -> str:
    return f"{value:{'+' if signed else ''}.{DIGITS.get(name, 3)}f}"


def _reason(text: str | None) -> str:
    """The first line of a failure reason, cut at a space so no number is cut in half."""
    line = (text or "no reason given").strip().splitlines()[0]
    return line if len(line) <= REASON_CHARS else line[:REASON_CHARS].rsplit(" ", 1)[0] + " ..."


def _changes(proposal: Proposal, result: dict, incumbent: dict) -> list[str]:
    lines = []
    for edit in proposal.edits:
        if isinstance(edit, FileEdit):
            lines.append(f"- edited `{edit.file}` (search and replace)")
            continue
        if isinstance(edit, MoveEdit):
            lines.append(f"- applied the move `{edit.move}` (its declared patch)")
            continue
        old = incumbent.get("knobs", {}).get(edit.knob)
        new = result.get("knobs", {}).get(edit.knob) if result.get("status") == "ok" else None
        if new is None:  # a failed run reports no knobs: its value is not a measured number
            lines.append(f"- `{edit.knob}`: {_value(old)} -> the proposed value (the run did not report it)")
        elif isinstance(new, str) or isinstance(old, str) or old is None:
            lines.append(f"- `{edit.knob}`: {_value(old)} -> {_value(new)}")
        else:
            direction = "raised" if new > old else "lowered" if new < old else "unchanged"
            lines.append(f"- `{edit.knob}`: {_value(old)} -> {_value(new)} ({direction})")
    return lines


def _noise(verdict: dict) -> str:
    delta, (low, high), margin = verdict["delta"], verdict["ci95"], verdict["margin"]
    if low > margin:
        return (f"Yes: the lower bound {low:+.3f} of the interval is above the margin {margin:+.3f}, "
                f"so the gain is beyond noise.")
    if high < 0:
        return f"Yes, and for the worse: the whole interval is below zero (upper bound {high:+.3f})."
    if verdict["decision"] == "reeval":
        return (f"Not yet: the estimate {delta:+.3f} clears the margin {margin:+.3f} but the lower bound "
                f"{low:+.3f} does not; more seeds were asked for.")
    return (f"No: the interval [{low:+.3f}, {high:+.3f}] reaches below the margin {margin:+.3f}; the effect "
            f"cannot be told from noise.")


def _across_training_seeds(training: dict) -> str:
    """What re-training on fresh seeds found: the change by training seed, averaged, and the verdict."""
    verdict = training["verdict"]
    if verdict["delta"] is None:
        return f"No: re-trained with a fresh seed, the candidate failed ({_reason(verdict['reason'])})."
    low, high = verdict["ci95"]
    by_seed = ", ".join(f"seed {p['train_seed']} {p['delta']:+.3f}" for p in training["per_seed"])
    text = (f"Re-trained with fresh training seeds, the incumbent too, the paired accuracy change by training "
            f"seed was {by_seed}; averaged over them {verdict['delta']:+.3f} (95% CI [{low:+.3f}, {high:+.3f}]). ")
    if verdict["decision"] == "keep":
        text += f"Yes: the lower bound {low:+.3f} is above the margin {verdict['margin']:+.3f} across training runs."
    else:
        text += (f"No: the lower bound {low:+.3f} does not clear the margin {verdict['margin']:+.3f}; the first "
                 "training run's gain cannot be told from training noise.")
    for gone in training.get("left_out", []):
        text += f" Training seed {gone['train_seed']} is left out: the incumbent failed to train with it."
    return text


def _advice(proposal: Proposal, result: dict, incumbent: dict, verdict: dict) -> list[str]:
    edit = proposal.edits[0]
    target = (f"`{edit.knob}`" if isinstance(edit, KnobEdit) else f"the move `{edit.move}`"
              if isinstance(edit, MoveEdit) else f"the edit to `{edit.file}`")
    if result.get("status") != "ok" or verdict.get("delta") is None:
        if "time" in (result.get("reason") or "").lower():
            return ["The run hit its time limit: shorter completions (`grpo.max_completion_length`) or a "
                    "reward.py that does less per completion would train its budget in time."]
        if isinstance(edit, MoveEdit):
            return [f"The run failed with {target}: read the reason above, then try another move or a knob."]
        return [f"The run failed: read the reason above, then try {target} with a smaller step, or another knob."]
    advice = []
    deltas = {m: result["metrics"][m] - incumbent["metrics"][m] for m in METRICS
              if m in result.get("metrics", {}) and m in incumbent.get("metrics", {})}
    if deltas.get("truncation_rate", 0.0) > RATE_MOVE:
        advice.append("Truncation rose: lower the token limits (`sampling.max_new_tokens`, "
                      "`grpo.max_completion_length`) or add a repetition penalty so answers end sooner.")
    if deltas.get("format_valid_rate", 0.0) < -RATE_MOVE:
        advice.append("Fewer answers are well formed: lower the sampling temperature or weigh `reward.format` more.")
    if deltas.get("repetition_rate", 0.0) > RATE_MOVE:
        advice.append("Repetition rose: try `sampling.repetition_penalty` or `sampling.frequency_penalty`.")
    low, high = verdict["ci95"]
    numeric = isinstance(edit, KnobEdit) and not isinstance(edit.value, str)
    if verdict["decision"] == "keep":
        new = _value(result.get("knobs", {}).get(edit.knob)) if numeric else ""
        advice.append(f"It helped: push {target} further in the same direction, beyond {new}." if numeric
                      else f"It helped: keep {target} and build on it with another change.")
    elif high < 0:
        advice.append(f"Refuted: {target} this way hurts; try the other direction or another knob.")
    elif verdict["delta"] > verdict["margin"]:
        advice.append(f"Promising but within noise: a larger step of {target} in the same direction would tell.")
    else:
        advice.append(f"No measurable effect: leave {target} as it was and try another knob.")
    return advice


def _common_seeds(result: dict, incumbent: dict) -> list[int]:
    return [s for s in incumbent.get("seeds", []) if s in set(result.get("seeds", []))]


def _same_seeds(result: dict, incumbent: dict) -> bool:
    return set(result.get("seeds", [])) == set(incumbent.get("seeds", []))


def _accuracy_on(res: dict, seeds: list[int]) -> float | None:
    """Mean accuracy of `res` over `seeds` only, from its per-example scores; None without them."""
    if res.get("status") != "ok":
        return None
    if set(seeds) == set(res.get("seeds", [])):
        return res["metrics"]["accuracy"]
    if "per_example" not in res or not seeds:
        return None
    position = {seed: i for i, seed in enumerate(res["seeds"])}
    scores = [row[position[s]] for row in res["per_example"].values() for s in seeds]
    return sum(scores) / len(scores)


def _table(result: dict, incumbent: dict, verdict: dict) -> list[str]:
    """The metrics side by side. Every change in it is on the seeds both results share, so its
    accuracy change is the paired one stated above it, never a difference that mixes seeds. The
    other metrics are aggregates over each result's own seeds: when the seeds differ (a 3-seed
    candidate against a 6-seed incumbent) they are listed without a change."""
    seeds = _common_seeds(result, incumbent)
    same = _same_seeds(result, incumbent)
    names = [m for m in METRICS if m in result["metrics"] and m in incumbent.get("metrics", {})]
    lines = [f"| metric, on the {len(seeds)} seeds both ran | incumbent | candidate | change |", "|---|---|---|---|"]
    inc_acc, cand_acc = _accuracy_on(incumbent, seeds), _accuracy_on(result, seeds)
    if inc_acc is not None and cand_acc is not None:
        lines.append(f"| accuracy | {_metric('accuracy', inc_acc)} | {_metric('accuracy', cand_acc)} | "
                     f"{verdict['delta']:+.3f} |")
    for name in names:
        if name != "accuracy" and same:
            inc, cand = incumbent["metrics"][name], result["metrics"][name]
            lines.append(f"| {name} | {_metric(name, inc)} | {_metric(name, cand)} | "
                         f"{_metric(name, cand - inc, signed=True)} |")
    if same:
        return lines
    lines += ["", f"| metric, on each one's own seeds | incumbent ({len(incumbent['seeds'])} seeds) | "
                  f"candidate ({len(result['seeds'])} seeds) |", "|---|---|---|"]
    for name in (n for n in names if n != "accuracy"):  # accuracy is above, on the common seeds
        lines.append(f"| {name} | {_metric(name, incumbent['metrics'][name])} | "
                     f"{_metric(name, result['metrics'][name])} |")
    return lines


def critique(proposal: Proposal, result: dict, incumbent: dict, verdict: dict, training: dict | None = None) -> str:
    """Markdown self-feedback on one round; every number in it comes from the arguments. `verdict` is
    the comparison on evaluation seeds; `training`, when the round re-trained (the `retrain` step's
    output), is the one across training seeds, which then has the last word."""
    final = training["verdict"] if training else verdict
    out = ["**What changed.**", *_changes(proposal, result, incumbent), ""]
    if result.get("status") != "ok" or verdict.get("delta") is None:
        out += [f"**What it did.** Nothing was measured: the run failed ({_reason(result.get('reason'))}). "
                f"Decision: {verdict['decision']}.", ""]
    else:
        low, high = verdict["ci95"]
        out += [f"**What it did.** Decision: {final['decision']}. Paired accuracy change "
                f"{verdict['delta']:+.3f} (95% CI [{low:+.3f}, {high:+.3f}]) over {verdict['n_examples']} "
                f"examples x {verdict['n_seeds']} seeds{' of the first training run' if training else ''}"
                f"{POOLED if verdict['reason'].startswith(DETERMINISTIC) else ''}, "
                f"against a margin of {verdict['margin']:+.3f}.", "",
                *_table(result, incumbent, verdict), "", f"**Beyond noise?** {_noise(verdict)}", ""]
        if training:
            out += [f"**Across training seeds?** {_across_training_seeds(training)}", ""]
    out += ["**Next.**", *(f"- {line}" for line in _advice(proposal, result, incumbent, final))]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# checking

def _numbers(obj: Any) -> list[float]:
    """Every number in a nested structure; strings contribute the numbers written in them."""
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, str):
        return [_parse(m.group())[0] for m in NUMBER.finditer(obj)]
    if isinstance(obj, dict):
        return [n for value in obj.values() for n in _numbers(value)]
    if isinstance(obj, (list, tuple)):
        return [n for value in obj for n in _numbers(value)]
    return []


def _parse(text: str) -> tuple[float, float]:
    """A printed number's value and its unit in the last place (0.043 -> 0.001, 1e-06 -> 1e-06)."""
    percent = text.endswith("%")
    body = text.rstrip("%")
    mantissa, _, exponent = body.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    value, unit = float(body), 10.0 ** (int(exponent or 0) - decimals)
    return (value / 100, unit / 100) if percent else (value, unit)


def _given(result: dict, incumbent: dict, verdict: dict, training: dict | None) -> list[float]:
    """The numbers a critique may state, with the differences and magnitudes it may derive."""
    given: list[float] = _numbers(training)
    for res in (result, incumbent):
        given += _numbers(res.get("metrics", {})) + _numbers(res.get("knobs", {})) + _numbers(res.get("reason"))
        given += [group["count"] for group in res.get("failures", {}).values()]
        given += [len(res.get("seeds", []))] + _numbers(res.get("num_examples"))
    given += _numbers(verdict)
    seeds = _common_seeds(result, incumbent)
    given += [len(seeds)] + [a for a in (_accuracy_on(result, seeds), _accuracy_on(incumbent, seeds)) if a is not None]
    if _same_seeds(result, incumbent):  # a difference of aggregates over different seeds is no change
        for name, value in result.get("metrics", {}).items():
            other = incumbent.get("metrics", {}).get(name)
            if isinstance(value, (int, float)) and isinstance(other, (int, float)):
                given.append(value - other)
    return given + [abs(v) for v in given]


def check_critique(text: str, result: dict, incumbent: dict, verdict: dict, training: dict | None = None) -> list[str]:
    """The numbers in `text` (as written) that match no number given in `result`, `incumbent`,
    `verdict` or `training` (the `retrain` step's output, when there is one) at the precision they
    are printed with; an empty list means the text is grounded."""
    given = _given(result, incumbent, verdict, training)
    unmatched = []
    for match in NUMBER.finditer(text):
        value, unit = _parse(match.group())
        if float(match.group().rstrip("%")) in CONSTANTS:
            continue
        tolerance = unit / 2 * (1 + 1e-6) + 1e-12  # half a unit: what rounding to this precision allows
        if not any(abs(g - value) <= tolerance for g in given):
            unmatched.append(match.group())
    return unmatched
