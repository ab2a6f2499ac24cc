"""Confidence intervals and the verdicts every generated figure and doc uses.

A claim such as "larger N converges in fewer iterations" or "LIRPG beats PPO" is judged on a 95%
confidence interval of the *difference* between two settings over seeds, never on whether two
intervals of their own happen to overlap:

    reproduced     the interval of the difference excludes 0 on the claimed side
    contradicted   it excludes 0 on the other side
    not resolved   it covers 0: the runs cannot tell

Two intervals: `diff_ci`, Welch's on the difference of means (final returns, final losses), and
`shift_ci`, the Hodges-Lehmann shift with its exact Mann-Whitney interval (times to a target,
where a run that never reaches the target has no finite value and a mean is undefined).
"""
import math
import statistics
from fractions import Fraction

# Two-sided 95% Student t quantiles t_{0.975, df}; between table entries, interpolated in 1/df
# (accurate to ~1e-3), which avoids a scipy dependency.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
_Z975 = 1.959964


def t975(df):
    """The 97.5% quantile of Student's t with `df` (> 0, possibly fractional) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, not {df}")
    if df in _T975:
        return _T975[df]
    if df < 1:
        return _T975[1] * (1 / df) ** 1.5  # heavy tails; a CI on < 1 dof is only ever reported as huge
    keys = sorted(_T975)
    if df > keys[-1]:
        lo, hi, qlo, qhi = keys[-1], math.inf, _T975[keys[-1]], _Z975
    else:
        lo = max(k for k in keys if k < df)
        hi = min(k for k in keys if k > df)
        qlo, qhi = _T975[lo], _T975[hi]
    # Linear in 1/df between the neighbouring entries (1/inf = 0).
    x, xlo, xhi = 1 / df, 1 / lo, (0.0 if hi == math.inf else 1 / hi)
    return qhi + (qlo - qhi) * (x - xhi) / (xlo - xhi)


def _clean(values):
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_ci(values):
    """(mean, half-width of the 95% t interval, n) over the finite `values`; half-width nan when n < 2."""
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, t975(n - 1) * math.sqrt(var / n), n


def diff_ci(a, b):
    """(difference of means mean(a) - mean(b), half-width of its 95% Welch interval)."""
    xa, xb = _clean(a), _clean(b)
    if len(xa) < 2 or len(xb) < 2:
        ma = sum(xa) / len(xa) if xa else math.nan
        mb = sum(xb) / len(xb) if xb else math.nan
        return ma - mb, math.nan
    ma, mb = sum(xa) / len(xa), sum(xb) / len(xb)
    va = sum((x - ma) ** 2 for x in xa) / (len(xa) - 1) / len(xa)
    vb = sum((x - mb) ** 2 for x in xb) / (len(xb) - 1) / len(xb)
    se2 = va + vb
    if se2 == 0:
        return ma - mb, 0.0
    df = se2 ** 2 / ((va ** 2 / (len(xa) - 1) if va else 0) + (vb ** 2 / (len(xb) - 1) if vb else 0))
    return ma - mb, t975(df) * math.sqrt(se2)


def verdict(diff, half_width, claimed):
    """Judge the claim that the difference is `claimed` ("less" or "greater" than 0) from its 95% CI."""
    if not (math.isfinite(diff) and math.isfinite(half_width)):
        return interval_verdict(math.nan, math.nan, claimed)
    return interval_verdict(diff - half_width, diff + half_width, claimed)


def interval_verdict(low, high, claimed):
    """Judge the claim that the difference is `claimed` ("less" or "greater" than 0) from its 95% CI
    [low, high]; infinite ends are allowed, nan ends give "not resolved"."""
    if claimed not in ("less", "greater"):
        raise ValueError(f"claimed must be less or greater, not {claimed!r}")
    if (claimed == "less" and high < 0) or (claimed == "greater" and low > 0):
        return "reproduced"
    if (claimed == "less" and low > 0) or (claimed == "greater" and high < 0):
        return "contradicted"
    return "not resolved"


def compare(a, b, claimed):
    """`verdict` of the claim mean(a) - mean(b) is `claimed`, with the difference and its CI half-width."""
    d, h = diff_ci(a, b)
    return verdict(d, h, claimed), d, h


# ---------------------------------------------------------------- Hodges-Lehmann shift

_SHIFT_TAIL = Fraction(1, 40)  # each tail of the two-sided 95% interval; exact, so no rounding decides the boundary


def mann_whitney_null(n, m):
    """counts[u]: how many of the C(n+m, n) equally likely rank orders of n + m untied values give
    U = u, where U counts the pairs (a_i, b_j) with a_i > b_j (u = 0 .. n*m).

    Dynamic programme over the largest of the values: when it is an a it beats all m b's (U grows
    by m), when it is a b it beats nothing, so counts(n, m) = counts(n-1, m) shifted by m + counts(n, m-1).
    """
    # table[j] holds counts(i, j) for the current i; counts(0, j) is a single order with U = 0.
    table = [[1] for _ in range(m + 1)]
    for i in range(1, n + 1):
        row = [[1]]  # counts(i, 0): U = 0
        for j in range(1, m + 1):
            with_a_on_top, with_b_on_top = table[j], row[j - 1]
            counts = [0] * (i * j + 1)
            for u, c in enumerate(with_a_on_top):
                counts[u + j] += c
            for u, c in enumerate(with_b_on_top):
                counts[u] += c
            row.append(counts)
        table = row
    return table[m]


def mann_whitney_critical(n, m):
    """The largest k with P(U <= k - 1) <= 2.5% under the null: the 95% interval of the shift runs from
    the k-th smallest to the k-th largest pairwise difference. 0 when n, m are too small for any 95% interval."""
    counts = mann_whitney_null(n, m)
    total, below, k = sum(counts), 0, 0
    while k < len(counts) and Fraction(below + counts[k], total) <= _SHIFT_TAIL:
        below += counts[k]
        k += 1   # below now counts U <= k - 1
    return k


def _difference(x, y):
    # A censored run (+inf) never reached the target. Two censored runs are a tie (not the nan of
    # inf - inf): neither is known to be faster, and when both runs stopped at the same time they are equal.
    return 0.0 if x == y == math.inf else x - y


def _kept(values):
    # Unlike _clean, keeps +inf: a censored run is data here.
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def shift_ci(a, b):
    """(estimate, low, high): the Hodges-Lehmann shift of `a` against `b` with its 95% interval.

    The estimate is the median of the n*m pairwise differences a_i - b_j. The interval [d_(k),
    d_(nm-k+1)] of the sorted differences, with k from the exact Mann-Whitney null distribution
    (`mann_whitney_critical`), is what R's wilcox.test(a, b, conf.int=TRUE, exact=TRUE) computes: for
    two continuous distributions that differ by a shift it covers the shift with probability >= 95%,
    whatever their shape (with ties, such as censored runs, the exact level is approximate).
    Values may be +inf (censored: never reached): inf - x = inf, x - inf = -inf, inf - inf = 0.
    None and nan are dropped. When n, m are too small for any 95% interval (2+2, 3+3), the interval
    is (-inf, inf).
    """
    xa, xb = _kept(a), _kept(b)
    if not xa or not xb:
        return math.nan, math.nan, math.nan
    differences = sorted(_difference(x, y) for x in xa for y in xb)
    k = mann_whitney_critical(len(xa), len(xb))
    if k == 0:
        return statistics.median(differences), -math.inf, math.inf
    return statistics.median(differences), differences[k - 1], differences[-k]


def compare_shift(a, b, claimed):
    """(verdict, estimate, low, high) for the claim that `a` is shifted `claimed` ("less"/"greater")
    against `b`, judged on the 95% interval of `shift_ci` as `verdict` judges a Welch interval."""
    estimate, low, high = shift_ci(a, b)
    return interval_verdict(low, high, claimed), estimate, low, high


def fmt_ci(mean, half_width, digits=3):
    """'m ± h' with `digits` significant digits ('m' alone when the half-width is not finite)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(half_width):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {half_width:.2g}"
