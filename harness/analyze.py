"""The analyze step: turn the last result and the campaign's history into Evidence.

Evidence is all a researcher sees of the numbers: the incumbent's metrics, the last round's
outcome (its metric deltas, verdict, or the exact reason it failed or was rejected), the
failure categories with a few examples, the accuracy trend, and how far training moved the
incumbent's policy from the base. Held-out scores are never in it.

    evidence = analyze(incumbent_result, last_round, history)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TREND_LENGTH = 10


@dataclass
class Evidence:
    round: int                                   # the round about to be proposed
    incumbent_accuracy: float
    incumbent_ci95: tuple[float, float]
    incumbent_metrics: dict                      # format_valid_rate, truncation_rate, ...
    knobs: dict                                  # the incumbent's knob values
    failures: dict                               # category -> {"count", "examples": [...]}
    last_round: dict | None = None               # {"round", "hypothesis", "decision", "delta", "ci95",
                                                 #  "metric_deltas", "reason"} of the previous round
    trend: list[float] = field(default_factory=list)   # accuracy of the incumbent after each round
    weight_change: float | None = None           # how far training moved the incumbent's policy from the
                                                 # base (relative L2), None where its result does not say

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A short plain-text rendering for prompts and logs."""
        low, high = self.incumbent_ci95
        lines = [f"round {self.round}: incumbent accuracy {self.incumbent_accuracy:.3f} [{low:.3f}, {high:.3f}]"]
        for name in ("format_valid_rate", "truncation_rate", "repetition_rate", "mean_completion_tokens"):
            if name in self.incumbent_metrics:
                lines.append(f"  {name}: {self.incumbent_metrics[name]:.3f}")
        if self.weight_change is not None:
            lines.append(f"  training moved the weights by {self.weight_change:.2e} of their norm")
        for category, group in list(self.failures.items())[:5]:
            example = group["examples"][0] if group["examples"] else {}
            lines.append(f"  failures {category}: {group['count']} e.g. {example.get('question')!r} -> "
                         f"{example.get('completion')!r} (expected {example.get('expected')!r})")
        if self.last_round:
            last = self.last_round
            lines.append(f"  last round {last['round']}: {last['decision']} ({last.get('reason') or ''})")
        if self.trend:
            lines.append("  trend: " + " ".join(f"{a:.3f}" for a in self.trend[-TREND_LENGTH:]))
        return "\n".join(lines)


def analyze(incumbent: dict, round_no: int, last_round: dict | None, trend: list[float]) -> Evidence:
    """Evidence for round `round_no` from the incumbent's result and the previous round's outcome."""
    if incumbent.get("status") != "ok":
        raise ValueError("the incumbent result must be ok to analyze it")
    metrics = incumbent["metrics"]
    return Evidence(
        round=round_no,
        incumbent_accuracy=metrics["accuracy"],
        incumbent_ci95=tuple(metrics["accuracy_ci95"]),
        incumbent_metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        knobs=dict(incumbent.get("knobs", {})),
        failures=incumbent.get("failures", {}),
        last_round=last_round,
        trend=list(trend[-TREND_LENGTH:]),
        weight_change=(incumbent.get("training") or {}).get("weight_change"),
    )
