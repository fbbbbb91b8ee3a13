"""Value-level credit for knob edits: a Bayesian model of what each knob value does, and how that
depends on the evidence.

Every knob k adds g_k(x) to the score. A round that moved knob k from u to v and measured a paired
delta d (with its 95% interval) is one observation d = g_k(v) - g_k(u) + noise, the noise read off
that interval. g_k is linear in features of the value: for a number, its position in the range
(log scale for `log: true` knobs) plus bumps around five points of the range, so one observation
says which way to go and how far its effect carries; for a choice knob, one weight per choice.
The weights have a Gaussian prior whose scale is per knob and grows with the deltas seen on that
knob: a knob whose edits never moved the score gets a small scale and is explored less, one whose
edits moved it a lot is explored more. The posterior is closed-form (Bayesian linear regression).

Context. The same edit need not do the same everywhere: a move against malformed answers helps when
many answers are malformed and little when few are. Each observation carries the context of the
round it was measured in (`context.py`: format failures, truncation, ..., each in [0, 1]), and an
edit's effect is g_k(v) - g_k(u) plus, for every context feature c_j, c_j (h_kj(v) - h_kj(u)): an
interaction on the same features of the value, with its own prior, INTERACTION_SCALE times the
knob's. So the gain predicted for an edit moves with the current evidence, as far as the outcomes
measured in other contexts say it should. Where every context is 0 (blanked evidence) the
interactions never meet data and the model is the additive one.

Targets. A move (the choice knob `move:<name>`, off -> on) that the scaffold says targets some
failures (moves.yaml `targets`, read as the context features that measure them) starts with a prior
mean of TARGET_GAIN per unit of each such feature on its interaction: before any outcome it is
expected to help where those failures are common. It is a mean with the interaction's prior spread,
not a rule: the outcomes of the rounds the move is tried in overturn it.

Drift. A reward edit (a `reward.*` weight, a move that patches reward.py alone) changes what
training optimizes, not how far it goes: where training leaves the policy as it was, it changes
nothing. Its row is scaled by the context's `policy_drift` (context.py; 1 where the context does not
say), so a zero measured at drift 0 says nothing about the edit and neither moves its mean nor
shrinks its prior scale (a round counts drift^2 of an observation there), and once a rate that
moves the policy is kept the edit is expected to do what it was never able to show. Knobs of the
optimizer itself (the learning rate sets the drift) are not scaled.

`sample` draws one posterior sample of the weights (Thompson sampling) and gives, per candidate
edit, the gain it predicts over the incumbent's value in a context; `predict` gives the posterior
mean and standard deviation of that gain, for the hypothesis text.

    model = CreditModel(specs, targets={"move:reward_malformed_penalty": ("format_failure",)},
                        scaled={"reward.format", "move:reward_malformed_penalty"})
    model.fit([{"knob": "sampling.top_p", "from": 1.0, "to": 0.683, "delta": 0.085, "ci95": [0.053, 0.117],
                "context": {"format_failure": 0.3, "truncation": 0.0}}])
    gains = model.sample([("sampling.top_p", 0.367), ("reward.format", 0.5)], current, np.random.default_rng(0),
                         context=evidence_context(evidence))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.researchers.context import DRIFT, FEATURES

BUMPS = np.linspace(0.0, 1.0, 5)  # centres of the bump features, in the knob's normalised range
BUMP_WIDTH = 0.15
TREND_SCALE = 3.0                 # the trend's prior scale over a bump's: most effects are monotone over
                                  # a range, so one good step says to take another in the same direction
PRIOR_SCALE = 0.05                # prior standard deviation of a knob's effect, in score units
PRIOR_WEIGHT = 1.0                # how many observations the prior scale counts for
NOISE_FLOOR = 0.005               # a delta measured as exactly 0 (an interval of width 0) is still not exact
INTERACTION_SCALE = 0.5           # an interaction's prior scale, relative to its knob's: most of an effect is
                                  # the edit's own, and the context shifts it
TARGET_GAIN = 0.05                # a targeted move's prior gain per unit of a targeted feature: +0.025 where
                                  # the failures it aims at are half the answers


def position(spec: dict, value: Any) -> float:
    """Where a numeric value lies in its knob's range, 0 at min and 1 at max (log scale if marked)."""
    low, high, x = float(spec["min"]), float(spec["max"]), float(value)
    if spec.get("log"):
        low, high, x = math.log(low), math.log(high), math.log(max(x, spec["min"]))
    return float(np.clip((x - low) / (high - low), 0.0, 1.0)) if high > low else 0.0


def drift_of(context: dict[str, float] | None) -> float:
    """The scale of a reward edit's effect in `context`: its `policy_drift`, 1 where it has none."""
    drift = (context or {}).get(DRIFT)
    return 1.0 if drift is None else float(drift)


def context_vector(context: dict[str, float] | None) -> np.ndarray:
    """A context by name as a vector in FEATURES order; a feature it does not name (or no context) is 0."""
    return np.array([float((context or {}).get(name, 0.0)) for name in FEATURES])


class CreditModel:
    """The model over the knobs of one surface; `fit` it, then `sample` or `predict`.

    The weights are laid out as the main block (every knob's features, `dim` of them) followed by
    one block of the same layout per context feature (the interactions).
    """

    def __init__(self, specs: dict[str, dict], targets: dict[str, tuple[str, ...]] | None = None,
                 scaled: set[str] | frozenset[str] = frozenset()):
        self.specs = dict(specs)
        self.scaled = set(scaled)  # the reward edits: their effect scales with the context's policy_drift
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for name in sorted(self.specs):
            size = len(self.specs[name]["choices"]) if "choices" in self.specs[name] else 1 + len(BUMPS)
            self.offsets[name] = (start, start + size)
            start += size
        self.dim = start
        self.width = self.dim * (1 + len(FEATURES))
        self.prior_mean = np.zeros(self.width)
        for knob, features in (targets or {}).items():
            on = self.offsets[knob][0] + list(self.specs[knob]["choices"]).index(True)
            for feature in features:
                self.prior_mean[self.dim * (1 + FEATURES.index(feature)) + on] = TARGET_GAIN
        self.mean = self.prior_mean.copy()
        self.precision = self._prior_precision(dict.fromkeys(self.specs, PRIOR_SCALE ** 2))
        self.counts = dict.fromkeys(self.specs, 0)
        self._root: np.ndarray | None = None  # the posterior covariance's square root, for `sample`

    def _prior_precision(self, variances: dict[str, float]) -> np.ndarray:
        """Diagonal: a knob's prior variance on its main weights, INTERACTION_SCALE^2 times it on its interactions."""
        prior = np.zeros(self.width)
        for name, (start, end) in self.offsets.items():
            for block in range(1 + len(FEATURES)):
                scale = 1.0 if block == 0 else INTERACTION_SCALE ** 2
                prior[block * self.dim + start:block * self.dim + end] = 1.0 / (scale * variances[name])
        return np.diag(prior)

    def features(self, knob: str, value: Any) -> np.ndarray:
        """The knob's block of features of `value`, placed in a main-block-length vector."""
        spec, (start, end) = self.specs[knob], self.offsets[knob]
        phi = np.zeros(self.dim)
        if "choices" in spec:
            if value in spec["choices"]:
                phi[start + list(spec["choices"]).index(value)] = 1.0
        else:
            u = position(spec, value)
            phi[start] = TREND_SCALE * u
            phi[start + 1:end] = np.exp(-0.5 * ((u - BUMPS) / BUMP_WIDTH) ** 2)
        return phi

    def scale(self, knob: str, context: dict[str, float] | None) -> float:
        """How much of the knob's effect shows in `context`: its drift for a reward edit, else all."""
        return drift_of(context) if knob in self.scaled else 1.0

    def design(self, knob: str, old: Any, new: Any, context: dict[str, float] | None) -> np.ndarray:
        """The regression row of an edit in a context: its change of features, then that change
        times each context feature; a reward edit's whole row times the context's drift."""
        change = self.scale(knob, context) * (self.features(knob, new) - self.features(knob, old))
        return np.concatenate([change, np.outer(context_vector(context), change).ravel()])

    def fit(self, observations: list[dict]) -> None:
        """The posterior given every observation {"knob", "from", "to", "delta", "ci95", "context"}
        (an observation without a context counts as measured in the zero context; one with
        `stacked` edits, a proposal of several, measured the sum of their effects). Rounds whose run
        failed (delta None) and knobs no longer on the surface are left out."""
        usable = [o for o in observations if o.get("delta") is not None
                  and all(edit["knob"] in self.specs for edit in [o, *o.get("stacked", [])])]
        squares, seen = dict.fromkeys(self.specs, 0.0), dict.fromkeys(self.specs, 0.0)
        self.counts = dict.fromkeys(self.specs, 0)
        for obs in usable:
            squares[obs["knob"]] += float(obs["delta"]) ** 2
            seen[obs["knob"]] += self.scale(obs["knob"], obs.get("context")) ** 2
            self.counts[obs["knob"]] += 1
        prior = self._prior_precision({name: (PRIOR_WEIGHT * PRIOR_SCALE ** 2 + squares[name])
                                       / (PRIOR_WEIGHT + seen[name]) for name in self.specs})
        rows = np.array([sum(self.design(edit["knob"], edit["from"], edit["to"], o.get("context"))
                             for edit in [o, *o.get("stacked", [])]) for o in usable]).reshape(-1, self.width)
        deltas = np.array([float(o["delta"]) for o in usable])
        intervals = [o.get("ci95") or (o["delta"], o["delta"]) for o in usable]
        weights = np.array([1.0 / max((float(high) - float(low)) / (2 * 1.96), NOISE_FLOOR) ** 2
                            for low, high in intervals])  # 1 / noise^2, the noise read off each interval
        self.precision = prior + (rows * weights[:, None]).T @ rows
        self.mean = np.linalg.solve(self.precision, prior @ self.prior_mean + rows.T @ (weights * deltas))
        self._root = None

    def _rows(self, edits: list[tuple[str, Any]], current: dict, context: dict[str, float] | None) -> np.ndarray:
        return np.array([self.design(knob, current[knob], value, context)
                         for knob, value in edits]).reshape(-1, self.width)

    def predict(self, edits: list[tuple[str, Any]], current: dict,
                context: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of each edit's gain over the incumbent `current`, in `context`."""
        rows = self._rows(edits, current, context)
        covariance = np.linalg.solve(self.precision, rows.T)
        return rows @ self.mean, np.sqrt(np.maximum(np.einsum("ij,ji->i", rows, covariance), 0.0))

    def sample(self, edits: list[tuple[str, Any]], current: dict, rng: np.random.Generator,
               context: dict[str, float] | None = None) -> np.ndarray:
        """Each edit's gain in `context` under one draw of the weights from the posterior (Thompson sampling)."""
        if self._root is None:  # once per fit: a campaign samples once a round, a test thousands of times
            lower = np.linalg.cholesky(self.precision)  # precision = L L^T, so L^-T z has the posterior covariance
            self._root = np.linalg.inv(lower.T)
        weights = self.mean + self._root @ rng.standard_normal(self.width)
        return self._rows(edits, current, context) @ weights
