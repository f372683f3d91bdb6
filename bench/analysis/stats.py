"""Every interval, test and correction: Wilson score intervals for pass/fail means (the percentile bootstrap collapses
to [0, 0] at 0/n and under-covers at small n), the percentile bootstrap for continuous scores, the crossed bootstrap
over training seeds and examples, paired tests (McNemar's exact, sign-flip permutation), power, and Holm."""
from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
POWER_Z = 1.959964 + 0.841621  # two-sided 5% and 80% power


def bootstrap_ci(values: list[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 rng_seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; seeded, so the same scores always give the same interval."""
    if not values:
        raise ValueError("no values to bootstrap")
    scores = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(rng_seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks bound memory for large n
        stop = min(start + 1000, resamples)
        idx = rng.integers(0, len(scores), size=(stop - start, len(scores)))
        means[start:stop] = scores[idx].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion, scipy's."""
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def mean_ci(values: list[float], level: float = 0.95, pass_fail: bool | None = None) -> tuple[float, float, str]:
    """The interval of a mean and how it was made: Wilson for pass/fail scores (`pass_fail`; by default, scores
    that are all 0 or 1), else the percentile bootstrap."""
    if not values:
        raise ValueError("no values for an interval")
    if pass_fail if pass_fail is not None else all(v in (0.0, 1.0) for v in values):
        return (*wilson_ci(int(sum(values)), len(values), level), "Wilson score")
    return (*bootstrap_ci(values, level), f"percentile bootstrap, {BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}")


def detectable_difference(differences: np.ndarray, pass_fail: bool, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean paired difference this many examples detect with `power` at two-sided level `alpha`:
    (z_(1-alpha/2) + z_power) * spread / sqrt(n), the spread being the paired differences' standard deviation (for
    pass/fail scores, the square root of the discordant share, as in McNemar's test). Both paired tests need k
    examples changed, all one way, to reach p = 2^(1-k) below alpha, so fewer than k examples detect nothing; for
    pass/fail scores, each changing the mean by 1 / n, it is never below k / n."""
    from scipy.stats import norm

    n = len(differences)
    k = int(np.floor(1 - np.log2(alpha))) + 1  # the fewest with 2^(1-k) below alpha, not at it
    if n < k:
        return float("inf")
    z = POWER_Z if (alpha, power) == (0.05, 0.8) else norm.ppf(1 - alpha / 2) + norm.ppf(power)
    if pass_fail:
        return max(z * float(np.sqrt(np.mean(differences != 0))) / np.sqrt(n), k / n)
    return z * float(np.std(differences, ddof=1)) / np.sqrt(n)


def crossed_means(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, rng_seed: int = BOOTSTRAP_SEED,
                  examples_rng_seed: int | None = None) -> np.ndarray:
    """Bootstrap means of scores of several training seeds on the same examples (`values`: [seeds, examples]): each
    replicate resamples the seeds and, once for all of them, the examples. Seeds and examples are crossed, not nested
    (every seed was scored on the same examples), so an effect carried by a few examples stays as uncertain as those
    few examples make it, however many seeds agree. Training seeds are drawn from `rng_seed` and examples from
    `examples_rng_seed` (default rng_seed + 1), each alone: quantities with the same seeds, or the same examples,
    share those draws."""
    seeds_rng = np.random.default_rng(rng_seed)
    examples_rng = np.random.default_rng(rng_seed + 1 if examples_rng_seed is None else examples_rng_seed)
    k, n = values.shape
    means = np.empty(resamples)
    for start in range(0, resamples, 500):  # chunks bound memory
        size = min(500, resamples - start)
        s, e = seeds_rng.integers(0, k, size=(size, k)), examples_rng.integers(0, n, size=(size, n))
        means[start:start + size] = values[s[:, :, None], e[:, None, :]].mean(axis=(1, 2))
    return means


def paired_bootstrap_ci(reference: np.ndarray, other: np.ndarray, level: float = 0.95,
                        resamples: int = BOOTSTRAP_RESAMPLES, rng_seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of mean(other - reference), resampling examples (both runs together)."""
    return bootstrap_ci(list(other - reference), level, resamples, rng_seed)


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against Binomial(n, 1/2)."""
    from scipy.stats import binomtest

    n = right_to_wrong + wrong_to_right
    return 1.0 if n == 0 else float(binomtest(right_to_wrong, n, 0.5).pvalue)


EXACT_SIGN_FLIPS = 16  # up to this many non-zero differences, all 2^n sign vectors are enumerated
LATTICE_DENOMINATORS = range(1, 65)  # differences that are multiples of 1/q (means over q seeds, judged halves) ...
LATTICE_WORK = 50_000_000  # ... get the exact distribution of their sum when (examples x grid span) is below this


def lattice_weights(values: np.ndarray) -> np.ndarray | None:
    """Integers w with values = w / q for the smallest q in LATTICE_DENOMINATORS, or None where there is no such q:
    pass/fail deltas averaged over q training seeds are multiples of 1/q, a judge's wins and ties of 1/2."""
    for q in LATTICE_DENOMINATORS:
        scaled = values * q
        weights = np.rint(scaled)
        if np.all(np.abs(scaled - weights) < 1e-9 * q):
            return weights.astype(np.int64)
    return None


def sign_flip_p(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, rng_seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided paired permutation p-value of mean(differences) = 0 under random sign flips (zeros flip to
    themselves). Exact: by enumeration for up to EXACT_SIGN_FLIPS non-zero differences, else, where the differences
    lie on a grid of 1/q, from the distribution of their signed sum, convolved one example at a time (so a method
    over seeds is tested as exactly as one seed is by McNemar's test). Else Monte Carlo with the +1 rule."""
    nonzero = differences[differences != 0]
    if not len(nonzero):
        return 1.0
    if len(nonzero) <= EXACT_SIGN_FLIPS:
        observed = abs(nonzero.sum()) - 1e-12
        signs = 1.0 - 2.0 * ((np.arange(2 ** len(nonzero))[:, None] >> np.arange(len(nonzero))) & 1)
        return float(np.mean(np.abs(signs @ nonzero) >= observed))
    weights = lattice_weights(nonzero)
    if weights is not None and len(weights) * int(np.abs(weights).sum()) <= LATTICE_WORK:
        return exact_sign_flip_p(weights)
    observed = abs(nonzero.sum()) - 1e-12
    rng = np.random.default_rng(rng_seed)
    extreme = 0
    for start in range(0, resamples, 1000):  # chunks bound memory for large n
        signs = rng.choice((-1.0, 1.0), size=(min(1000, resamples - start), len(nonzero)))
        extreme += int(np.sum(np.abs(signs @ nonzero) >= observed))
    return float((extreme + 1) / (resamples + 1))


def exact_sign_flip_p(weights: np.ndarray) -> float:
    """P(|sum of +-w_i| >= |sum of w_i|) over independent fair signs, for integer w_i: the sum is 2T - W, where T,
    the weight given a plus sign, has the distribution built here one weight at a time."""
    sizes = np.abs(weights)
    total = int(sizes.sum())
    distribution = np.zeros(total + 1)
    distribution[0] = 1.0
    reached = 0
    for size in sizes:
        reached += int(size)
        distribution[size:reached + 1] = 0.5 * (distribution[size:reached + 1] + distribution[:reached + 1 - size])
        distribution[:size] *= 0.5
    plus = np.arange(total + 1)
    return float(min(1.0, distribution[np.abs(2 * plus - total) >= abs(int(weights.sum()))].sum()))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1); a NaN (no test) stays NaN, outside the family."""
    tested = [i for i, p in enumerate(p_values) if not np.isnan(p)]
    order = sorted(tested, key=lambda i: p_values[i])
    adjusted, running = [float("nan")] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
