"""The one bootstrap interval of the project: the evaluator's metrics and the campaign's paired
comparisons and merged results all get their 95% intervals from `bootstrap_mean_ci`, so two
intervals a person compares were made the same way.

    low, high = bootstrap_mean_ci(per_example_scores)    # seeded: the same values, the same interval
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resamples are drawn in blocks of at most this many indices, so memory stays bounded on big splits.
BLOCK_ELEMENTS = 2_000_000


def bootstrap_mean_ci(values, *, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values` (one value per example)."""
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
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))
