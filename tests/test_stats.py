"""metarun.stats: t quantiles, CIs, the Hodges-Lehmann shift and verdicts against scipy's, brute-force and
hand-computed values."""
import itertools
import math
import random
import statistics

import pytest

from metarun.stats import (compare, compare_shift, diff_ci, interval_verdict, mann_whitney_critical, mann_whitney_null,
                           mean_ci, shift_ci, t975, verdict)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 4.5, 7, 22, 35, 80, 200, 5000])
def test_t_quantile_matches_scipy(df):
    assert t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=2e-3)


def test_mean_ci_is_the_t_interval():
    xs = [1.0, 2.0, 4.0, 7.0]
    mean, half, n = mean_ci(xs)
    sd = math.sqrt(sum((x - 3.5) ** 2 for x in xs) / 3)
    assert (mean, n) == (3.5, 4) and half == pytest.approx(3.182 * sd / 2)
    assert math.isnan(mean_ci([2.0])[1]) and mean_ci([float("nan"), 1.0, 3.0])[2] == 2


def test_welch_interval_matches_scipy():
    a, b = [1.0, 1.5, 2.2, 0.9, 1.4], [2.0, 2.9, 2.1, 3.5]
    d, h = diff_ci(a, b)
    res = scipy_stats.ttest_ind(a, b, equal_var=False)
    low, high = res.confidence_interval(0.95)
    assert d == pytest.approx((low + high) / 2) and h == pytest.approx((high - low) / 2, rel=3e-3)


def test_verdicts_follow_the_interval_of_the_difference():
    assert verdict(-1.0, 0.5, "less") == "reproduced"
    assert verdict(-1.0, 1.5, "less") == "not resolved"
    assert verdict(1.0, 0.5, "less") == "contradicted"
    assert verdict(1.0, 0.5, "greater") == "reproduced"
    assert verdict(1.0, float("nan"), "greater") == "not resolved"
    # Two settings whose own intervals overlap can still differ clearly (paired-looking seeds),
    # and clearly separated means with few seeds may not: the verdict uses the difference.
    assert compare([1.0, 1.1, 0.9], [5.0, 5.2, 4.8], "less")[0] == "reproduced"
    assert compare([1.0, 3.0], [2.0, 4.0], "less")[0] == "not resolved"


# ---------------------------------------------------------------- Hodges-Lehmann shift and its exact interval

def brute_force_null(n, m):
    """counts[u] over every choice of which n of the n + m ranks belong to a (U = pairs with a above b)."""
    counts = [0] * (n * m + 1)
    for a_ranks in itertools.combinations(range(n + m), n):
        # the a at rank r beats the b's below it: r minus the a's below it
        counts[sum(r - i for i, r in enumerate(a_ranks))] += 1
    return counts


@pytest.mark.parametrize("n, m", [(1, 1), (1, 4), (2, 2), (3, 2), (3, 5), (4, 4), (5, 5), (6, 3)])
def test_mann_whitney_null_counts_every_rank_order(n, m):
    assert mann_whitney_null(n, m) == brute_force_null(n, m)
    assert sum(mann_whitney_null(n, m)) == math.comb(n + m, n)


@pytest.mark.parametrize("n, m", [(2, 2), (3, 3), (3, 4), (4, 4), (3, 5), (5, 4), (5, 5), (6, 7), (8, 8)])
def test_critical_count_is_the_largest_with_a_tail_of_at_most_2_5_percent(n, m):
    counts = brute_force_null(n, m)
    k = mann_whitney_critical(n, m)
    assert sum(counts[:k]) / math.comb(n + m, n) <= 0.025 < sum(counts[:k + 1]) / math.comb(n + m, n)


def test_critical_counts_match_the_published_table():
    # Two-sided 5% Mann-Whitney tables reject at U <= 2 for 5+5, 0 for 4+4 and 23 for 10+10: k is one more.
    assert [mann_whitney_critical(*nm) for nm in [(5, 5), (4, 4), (10, 10), (3, 3)]] == [3, 1, 24, 0]


def test_hodges_lehmann_estimate_is_the_median_of_pairwise_differences():
    rng = random.Random(0)
    for n, m in [(5, 5), (4, 7), (6, 3)]:
        a = [rng.gauss(0, 1) for _ in range(n)]
        b = [rng.gauss(1, 2) for _ in range(m)]
        differences = sorted(x - y for x in a for y in b)
        assert shift_ci(a, b)[0] == pytest.approx(statistics.median(differences))


def test_interval_is_the_order_statistics_of_the_differences():
    a, b = [1.0, 2.5, 4.0, 7.0, 8.5], [3.0, 5.0, 6.5, 9.0, 12.0]
    # The 25 differences a_i - b_j, sorted by hand; k = 3 for 5 + 5: [d_3, d_23], estimate d_13.
    by_hand = [-11, -9.5, -8, -8, -6.5, -5.5, -5, -5, -4, -4, -3.5, -2.5, -2.5, -2, -2, -1, -0.5, -0.5, 0.5, 1, 2, 2, 3.5, 4, 5.5]
    assert sorted(x - y for x in a for y in b) == by_hand
    assert shift_ci(a, b) == (by_hand[12], by_hand[2], by_hand[22]) == (-2.5, -8.0, 3.5)


def test_interval_is_the_set_of_shifts_the_exact_test_does_not_reject():
    # What makes it a 95% interval: shifting a by any value inside leaves the two-sided exact
    # Mann-Whitney test (scipy's) at p > 0.05, just outside gives p <= 0.05.
    rng = random.Random(1)
    a = [rng.gauss(0, 1) for _ in range(6)]
    b = [rng.gauss(2, 1) for _ in range(7)]
    _, low, high = shift_ci(a, b)
    eps = 1e-9

    def p_value(shift):
        return scipy_stats.mannwhitneyu([x - shift for x in a], b, method="exact").pvalue

    assert p_value(low - eps) <= 0.05 < p_value(low + eps)
    assert p_value(high + eps) <= 0.05 < p_value(high - eps)


def test_censored_runs_give_infinite_ends_and_the_right_verdicts():
    inf = math.inf
    fast, slow = [1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 11.0, 12.0, 13.0, 14.0]
    # Two of the slow setting never reach: 10 of the 25 differences are -inf, the low end with them.
    # The other 15 run from 1 - 12 = -11 to 5 - 10 = -5; the median is the 3rd smallest of them (-11, -10, -10)
    # and the high end the 3rd largest (-5, -6, -6).
    assert shift_ci(fast, [10.0, 11.0, 12.0, inf, inf]) == (-10.0, -inf, -6.0)
    assert compare_shift(fast, [10.0, 11.0, 12.0, inf, inf], "less")[0] == "reproduced"
    assert compare_shift(fast, [10.0, 11.0, 12.0, inf, inf], "greater")[0] == "contradicted"
    # Two of the fast setting never reach: the high end is +inf, and the claim "less" is not resolved.
    assert shift_ci([1.0, 2.0, 3.0, inf, inf], slow) == (-8.0, -12.0, inf)   # finite: -13, -12, -12 ... -8 ... -7
    assert compare_shift([1.0, 2.0, 3.0, inf, inf], slow, "less")[0] == "not resolved"
    # inf - inf is a tie (0), not nan; every run of a censored against finite b: +inf throughout.
    assert shift_ci([inf] * 5, [inf] * 5) == (0.0, 0.0, 0.0)
    assert compare_shift([inf] * 5, [inf] * 5, "less")[0] == "not resolved"
    assert shift_ci([inf] * 5, slow) == (inf, inf, inf)
    assert compare_shift([inf] * 5, slow, "less")[0] == "contradicted"


@pytest.mark.parametrize("n, m", [(2, 2), (3, 3), (4, 3)])
def test_too_few_runs_give_no_interval_and_not_resolved(n, m):
    a, b = [float(i) for i in range(n)], [100.0 + i for i in range(m)]   # perfectly separated
    estimate, low, high = shift_ci(a, b)
    assert math.isfinite(estimate) and (low, high) == (-math.inf, math.inf)
    assert compare_shift(a, b, "less")[0] == "not resolved"


def test_interval_verdict_reads_infinite_and_nan_ends():
    assert interval_verdict(-math.inf, -1.0, "less") == "reproduced"
    assert interval_verdict(-math.inf, -1.0, "greater") == "contradicted"
    assert interval_verdict(-1.0, math.inf, "less") == "not resolved"
    assert interval_verdict(0.0, 0.0, "greater") == "not resolved"
    assert interval_verdict(-1.0, 0.0, "less") == "not resolved"   # an end at 0 does not exclude it
    assert interval_verdict(math.nan, math.nan, "less") == "not resolved"
    with pytest.raises(ValueError):
        interval_verdict(1.0, 2.0, "smaller")
