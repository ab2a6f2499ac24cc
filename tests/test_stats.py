"""metarun.stats: t quantiles, CIs and verdicts against scipy's and hand-computed values."""
import math

import pytest

from metarun.stats import compare, diff_ci, mean_ci, t975, verdict

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
