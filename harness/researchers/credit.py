"""Value-level credit for knob edits: an additive Bayesian model of what each knob value does.

Every knob k adds g_k(x) to the score. A round that moved knob k from u to v and measured a paired
delta d (with its 95% interval) is one observation d = g_k(v) - g_k(u) + noise, the noise read off
that interval. g_k is linear in features of the value: for a number, its position in the range
(log scale for `log: true` knobs) plus bumps around five points of the range, so one observation
says which way to go and how far its effect carries; for a choice knob, one weight per choice.
The weights have a Gaussian prior whose scale is per knob and grows with the deltas seen on that
knob: a knob whose edits never moved the score gets a small scale and is explored less, one whose
edits moved it a lot is explored more. The posterior is closed-form (Bayesian linear regression).

`sample` draws one posterior sample of the weights (Thompson sampling) and gives, per candidate
edit, the gain it predicts over the incumbent's value; `predict` gives the posterior mean and
standard deviation of that gain, for the hypothesis text.

    model = CreditModel(specs)
    model.fit([{"knob": "sampling.top_p", "from": 1.0, "to": 0.683, "delta": 0.085, "ci95": [0.053, 0.117]}])
    gains = model.sample([("sampling.top_p", 0.367), ("reward.format", 0.5)], current, np.random.default_rng(0))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BUMPS = np.linspace(0.0, 1.0, 5)  # centres of the bump features, in the knob's normalised range
BUMP_WIDTH = 0.15
TREND_SCALE = 3.0                 # the trend's prior scale over a bump's: most effects are monotone over
                                  # a range, so one good step says to take another in the same direction
PRIOR_SCALE = 0.05                # prior standard deviation of a knob's effect, in score units
PRIOR_WEIGHT = 1.0                # how many observations the prior scale counts for
NOISE_FLOOR = 0.005               # a delta measured as exactly 0 (an interval of width 0) is still not exact


def position(spec: dict, value: Any) -> float:
    """Where a numeric value lies in its knob's range, 0 at min and 1 at max (log scale if marked)."""
    low, high, x = float(spec["min"]), float(spec["max"]), float(value)
    if spec.get("log"):
        low, high, x = math.log(low), math.log(high), math.log(max(x, spec["min"]))
    return float(np.clip((x - low) / (high - low), 0.0, 1.0)) if high > low else 0.0


class CreditModel:
    """The additive model over the knobs of one surface; `fit` it, then `sample` or `predict`."""

    def __init__(self, specs: dict[str, dict]):
        self.specs = dict(specs)
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for name in sorted(self.specs):
            size = len(self.specs[name]["choices"]) if "choices" in self.specs[name] else 1 + len(BUMPS)
            self.offsets[name] = (start, start + size)
            start += size
        self.dim = start
        self.mean = np.zeros(self.dim)
        self.precision = np.eye(self.dim) / PRIOR_SCALE ** 2
        self.counts = dict.fromkeys(self.specs, 0)

    def features(self, knob: str, value: Any) -> np.ndarray:
        """The knob's block of features of `value`, placed in a full-length vector."""
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

    def change(self, knob: str, old: Any, new: Any) -> np.ndarray:
        return self.features(knob, new) - self.features(knob, old)

    def fit(self, observations: list[dict]) -> None:
        """The posterior given every observation {"knob", "from", "to", "delta", "ci95"}. Rounds whose
        run failed (delta None) and knobs no longer on the surface are left out."""
        usable = [o for o in observations if o.get("delta") is not None and o["knob"] in self.specs]
        squares = dict.fromkeys(self.specs, 0.0)
        self.counts = dict.fromkeys(self.specs, 0)
        for obs in usable:
            squares[obs["knob"]] += float(obs["delta"]) ** 2
            self.counts[obs["knob"]] += 1
        prior = np.zeros(self.dim)
        for name, (start, end) in self.offsets.items():
            variance = (PRIOR_WEIGHT * PRIOR_SCALE ** 2 + squares[name]) / (PRIOR_WEIGHT + self.counts[name])
            prior[start:end] = 1.0 / variance
        precision, moment = np.diag(prior), np.zeros(self.dim)
        for obs in usable:
            phi = self.change(obs["knob"], obs["from"], obs["to"])
            low, high = obs.get("ci95") or (obs["delta"], obs["delta"])
            noise = max((float(high) - float(low)) / (2 * 1.96), NOISE_FLOOR)
            precision += np.outer(phi, phi) / noise ** 2
            moment += phi * float(obs["delta"]) / noise ** 2
        self.precision = precision
        self.mean = np.linalg.solve(precision, moment)

    def _changes(self, edits: list[tuple[str, Any]], current: dict) -> np.ndarray:
        return np.array([self.change(knob, current[knob], value) for knob, value in edits]).reshape(-1, self.dim)

    def predict(self, edits: list[tuple[str, Any]], current: dict) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of each edit's gain over the incumbent `current`."""
        changes = self._changes(edits, current)
        covariance = np.linalg.solve(self.precision, changes.T)
        return changes @ self.mean, np.sqrt(np.maximum(np.einsum("ij,ji->i", changes, covariance), 0.0))

    def sample(self, edits: list[tuple[str, Any]], current: dict, rng: np.random.Generator) -> np.ndarray:
        """Each edit's gain under one draw of the weights from the posterior (Thompson sampling)."""
        lower = np.linalg.cholesky(self.precision)  # precision = L L^T, so L^-T z has the posterior covariance
        weights = self.mean + np.linalg.solve(lower.T, rng.standard_normal(self.dim))
        return self._changes(edits, current) @ weights
