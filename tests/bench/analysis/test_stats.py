import pytest

from bench.analysis.stats import bootstrap_ci


def test_interval_brackets_the_mean_and_is_reproducible():
    scores = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(scores)
    assert low < 0.3 < high and 0.18 < low and high < 0.42
    assert bootstrap_ci(scores) == (low, high)


def test_constant_scores_have_a_point_interval():
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    assert bootstrap_ci([0.0]) == (0.0, 0.0)


def test_pass_fail_means_get_wilson_intervals_that_do_not_collapse():
    from scipy.stats import binomtest

    from bench.analysis.stats import mean_ci

    low, high, method = mean_ci([0.0] * 24)
    assert method == "Wilson score" and low == 0.0 and 0.13 < high < 0.15  # not [0, 0] at 0/24
    ci = binomtest(7, 20).proportion_ci(method="wilson")
    assert mean_ci([1.0] * 7 + [0.0] * 13)[:2] == pytest.approx((ci.low, ci.high))
    assert mean_ci([0.2, 0.5, 0.9])[2].startswith("percentile bootstrap")


@pytest.mark.parametrize("n", [10, 24, 48, 200])
def test_wilson_covers_near_its_level_where_the_bootstrap_does_not(n):
    """Simulated pass/fail scores at rates a small model shows (2% to 50%), 4,000 samples each: Wilson's 95% interval
    holds the true rate at least 87% of the time at every rate (its coverage oscillates with n and p) and 94% on
    average; the percentile bootstrap, which collapses to [0, 0] at 0/n, falls short at small n."""
    from functools import lru_cache

    import numpy as np

    from bench.analysis.stats import bootstrap_ci, wilson_ci

    boot_ci = lru_cache(None)(lambda k: bootstrap_ci([1.0] * k + [0.0] * (n - k), resamples=2000))
    wilson_of = lru_cache(None)(lambda k: wilson_ci(k, n))
    rng = np.random.default_rng(0)
    wilson, boot = [], []
    for p in (0.02, 0.05, 0.1, 0.3, 0.5):
        draws = rng.binomial(n, p, size=4000)
        wilson.append(np.mean([wilson_of(int(k))[0] <= p <= wilson_of(int(k))[1] for k in draws]))
        boot.append(np.mean([boot_ci(int(k))[0] <= p <= boot_ci(int(k))[1] for k in draws]))
    assert min(wilson) >= 0.87 and np.mean(wilson) >= 0.94, wilson
    if n <= 24:
        assert np.mean(boot) < np.mean(wilson) - 0.05, (boot, wilson)


def test_detectable_difference_at_80_percent_power():
    """z = 1.96 + 0.84 = 2.80; pass/fail spread = sqrt(discordant share), floored by the exact test's 6 / n."""
    import numpy as np

    from bench.analysis.stats import detectable_difference

    diff = np.array([-1.0] * 10 + [1.0] * 10 + [0.0] * 180)  # 10% discordant of 200
    assert detectable_difference(diff, True) == pytest.approx(2.8016 * np.sqrt(0.1) / np.sqrt(200), rel=1e-3)
    assert detectable_difference(np.zeros(60), True) == pytest.approx(6 / 60)  # nothing changed: the exact floor
    assert detectable_difference(np.zeros(5), True) == float("inf")  # 5 examples cannot reach p < 0.05
    spread = np.array([0.1, -0.1] * 50)
    assert detectable_difference(spread, False) == pytest.approx(2.8016 * np.std(spread, ddof=1) / 10, rel=1e-3)
    assert detectable_difference(np.array([0.3, -0.1, 0.2, 0.4, 0.1]), False) == float("inf"), "as the sign-flip test"


def test_the_detectable_difference_has_80_percent_power_by_exact_enumeration():
    """Not the formula against itself: McNemar's exact test's power at the detectable Δ, enumerated over the number
    of discordant examples and their split, is about 80%; and the floor is the smallest k all one way that the exact
    test calls significant."""
    import numpy as np
    from scipy.stats import binom, binomtest

    from bench.analysis.stats import detectable_difference, mcnemar_exact

    n, share = 200, 0.1
    delta = detectable_difference(np.array([-1.0] * 10 + [1.0] * 10 + [0.0] * 180), True)
    lose = (share - delta) / (2 * share)  # a discordant example goes right->wrong with this probability
    rejects = {k: np.array([mcnemar_exact(r, k - r) < 0.05 for r in range(k + 1)]) for k in range(n + 1)}
    power = sum(binom.pmf(k, n, share) * np.sum(binom.pmf(np.arange(k + 1), k, lose)[rejects[k]])
                for k in range(n + 1))
    assert 0.72 < power < 0.88, power
    floor = next(k for k in range(1, 20) if binomtest(0, k, 0.5).pvalue < 0.05)
    assert detectable_difference(np.zeros(60), True) == pytest.approx(floor / 60)
    for alpha in (0.25, 0.125, 0.05, 0.01):  # at a power of 2, k all one way give p = alpha exactly: not below it
        k = next(k for k in range(1, 30) if mcnemar_exact(0, k) < alpha)
        assert detectable_difference(np.zeros(60), True, alpha=alpha) == pytest.approx(k / 60)


def test_the_seed_and_example_bootstrap_draws_examples_once_for_all_seeds():
    """Three training seeds that all lose the same 2 of 48 examples: the examples, not the seeds, carry the effect,
    so the interval must reach 0 (both examples missed by a resample: (46/48)^48 = 13%), as the paired bootstrap
    of one seed does. Resampling examples per seed would shrink that to 0.2% and call 2 examples significant."""
    import numpy as np

    from bench.analysis.stats import crossed_means

    lost = np.zeros(48)
    lost[:2] = -1.0
    values = np.stack([lost] * 3)
    means = crossed_means(values)
    assert np.mean(means == 0) == pytest.approx((46 / 48) ** 48, abs=0.02)
    assert np.quantile(means, 0.975) == 0.0
    spread = np.stack([lost * 0, lost * 0, lost * 0]) + np.array([[-0.1], [0.0], [0.1]])  # seeds alone differ
    assert np.std(crossed_means(spread)) == pytest.approx(0.1 * np.sqrt(2 / 9), rel=0.1)
    assert np.array_equal(crossed_means(values), crossed_means(values)), "seeded: the same scores, the same interval"


def exact_by_polynomial(values: list[int]) -> float:
    """The sign-flip p by another route: the generating polynomial of the signed sum, in exact integers."""
    from fractions import Fraction

    counts = {0: 1}
    for v in values:
        following: dict[int, int] = {}
        for total, ways in counts.items():
            for signed in (v, -v):
                following[total + signed] = following.get(total + signed, 0) + ways
        counts = following
    observed = abs(sum(values))
    return float(Fraction(sum(w for t, w in counts.items() if abs(t) >= observed), 2 ** len(values)))


def test_the_sign_flip_test_is_exact_beyond_enumeration_where_differences_lie_on_a_grid():
    """Over 16 changed examples the sign-flip p is exact where the differences are multiples of 1/q (pass/fail
    deltas averaged over q training seeds, a judge's halves): McNemar's exact p for +-1 at any n, the exact integer
    count for seed averages, where Monte Carlo's 10,000 sign vectors were off by 0.003 at p = 0.05 (8 lost, 19 gained:
    a star the exact test does not give)."""
    import numpy as np

    from bench.analysis.stats import mcnemar_exact, sign_flip_p

    for lost, gained in ((8, 19), (9, 21), (0, 40), (120, 80)):
        differences = np.array([-1.0] * lost + [1.0] * gained + [0.0] * 30)
        assert sign_flip_p(differences) == pytest.approx(mcnemar_exact(lost, gained), rel=1e-9, abs=1e-300)
    assert sign_flip_p(np.array([-1.0] * 8 + [1.0] * 19)) > 0.05
    rng = np.random.default_rng(3)
    for seeds in (2, 3, 8):
        averaged = rng.integers(-1, 2, size=(seeds, 24)).mean(axis=0) + 0.4 / seeds * (np.arange(24) < 12)
        averaged = np.round(averaged * seeds) / seeds  # on the grid of 1/seeds, a shift toward gains
        nonzero = averaged[averaged != 0]
        assert len(nonzero) > 16
        expected = exact_by_polynomial([int(round(v * seeds)) for v in nonzero])
        assert sign_flip_p(averaged) == pytest.approx(expected, rel=1e-9)
    judged = np.array([0.5] * 14 + [-0.5] * 3 + [1.0] * 2)  # a judge's win, tie and loss halves
    assert sign_flip_p(judged) == pytest.approx(exact_by_polynomial([1] * 14 + [-1] * 3 + [2] * 2), rel=1e-9)
    continuous = rng.normal(0.2, 1.0, size=40)  # no grid: Monte Carlo, seeded, with the +1 rule
    p = sign_flip_p(continuous)
    assert p == sign_flip_p(continuous) and p * 10_001 == pytest.approx(round(p * 10_001))
