"""The one bootstrap interval of the project: the evaluator's metrics and the campaign's paired
comparisons and merged results all get their 95% intervals from `bootstrap_mean_ci`, so two
intervals a person compares were made the same way.

    low, high = bootstrap_mean_ci(per_example_scores)    # seeded: the same values, the same interval
    low, high = bootstrap_mean_ci(differences, level=1 - 0.05 / 4)   # one of four tests at once
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resamples are drawn in blocks of at most this many indices, so memory stays bounded on big splits.
BLOCK_ELEMENTS = 2_000_000


def bootstrap_mean_ci(values, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` (one value per example), 95% unless
    `level` says otherwise (a test among several asks for a wider one)."""
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    block = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, samples, block):
        count = min(block, samples - start)
        means[start:start + count] = values[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = round(50 * (1 - level), 9)  # percent in each tail; exactly 2.5 at 95%
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))
