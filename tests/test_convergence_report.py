"""scripts/convergence_report.py: verdicts that respect the CIs, targets, plateaus, and a doc whose
prose cannot drift from the code or the data."""
import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_metarun

sys.path.insert(0, str(REPO / "scripts"))
import convergence_report as cr  # noqa: E402


def curve(values, seconds_per_iter=0.1, cost_per_iter=100.0):
    """A logged curve every 10 iterations."""
    iterations = [10 * (i + 1) for i in range(len(values))]
    return pd.DataFrame({"iteration": iterations, "time": [i * seconds_per_iter for i in iterations],
                         "oracle_cost": [i * cost_per_iter for i in iterations], "value": values})


def reaching_at(k, n=10, seconds_per_iter=0.1):
    """A loss curve at 1.0 until point k, then at 0.1: it reaches any target in (0.1, 1) at iteration 10 (k + 1)."""
    return curve([1.0] * k + [0.1] * (n - k), seconds_per_iter)


def test_overlapping_runs_give_not_resolved_even_when_the_means_are_ordered():
    # Setting A reaches the target 0.8 points earlier on average, but the seeds scatter over each other:
    # the old logic (compare the means, check the order) called this "reproduced".
    a = [reaching_at(k) for k in (2, 6, 3, 7, 4)]
    b = [reaching_at(k) for k in (3, 7, 4, 8, 4)]
    result = cr.compare_to_target(a, b, "less")
    assert result["iteration"]["estimate"] < 0                   # the shift is ordered as claimed ...
    assert result["iteration"]["verdict"] == "not resolved"      # ... but the interval of the shift covers 0
    assert result["iteration"]["low"] < 0 < result["iteration"]["high"]


def test_separated_runs_give_reproduced_and_the_other_way_contradicted():
    fast = [reaching_at(k) for k in (1, 2, 1, 2, 1)]
    slow = [reaching_at(k) for k in (6, 7, 6, 7, 6)]
    assert cr.compare_to_target(fast, slow, "less")["iteration"]["verdict"] == "reproduced"
    assert cr.compare_to_target(fast, slow, "greater")["iteration"]["verdict"] == "contradicted"
    # Per second, the faster-per-iteration setting can lose when its iterations cost 10x more.
    fast_expensive = [reaching_at(k, seconds_per_iter=1.0) for k in (1, 2, 1, 2, 1)]
    result = cr.compare_to_target(fast_expensive, slow, "less")
    assert result["iteration"]["verdict"] == "reproduced" and result["time"]["verdict"] == "contradicted"


def test_target_is_the_highest_median_final_level_and_runs_above_it_are_censored():
    a = [curve([3, 2, 1, 0.5]), curve([3, 2.5, 2, 1.5]), curve([3, 2, 1.2, 1.0])]   # median final 1.0
    b = [curve([3, 1, 0.2, 0.1]), curve([3, 1, 0.3, 0.2]), curve([3, 9, 40, 90])]  # median final 0.2
    result = cr.compare_to_target(a, b, "less")
    assert result["target"] == 1.0
    assert result["censored"] == (1, 1)                   # 1.5 and 90 end above 1.0
    assert result["iteration"]["a"] == 40 and result["iteration"]["b"] == 20   # medians of (30, 40, inf), (20, 20, inf)
    # Even numbers of runs: the upper middle level, so more than half (3 of 4) still reach.
    assert cr.target_level([curve([v]) for v in (0.1, 0.2, 0.4, 0.8)]) == 0.4


def test_one_diverging_run_no_longer_hides_a_clear_difference():
    # A reaches in 2-3 logged points, B in 7-8; one B run diverges and ends at 1e12.
    a = [reaching_at(k) for k in (1, 2, 1, 2, 1)]
    b = [reaching_at(k) for k in (6, 7, 6, 7)] + [curve([1.0] + [10.0 ** (12 * i / 9) for i in range(1, 10)])]
    # The old target, the worst final level, is a level every other run is below from its first
    # point: all of them "reach" it at iteration 10 and the row came out not resolved by construction.
    worst = max(c["value"].iloc[-1] for c in a + b)
    assert worst == 1e12 and {cr.first_reach(c, worst, "iteration") for c in a + b[:4]} == {10.0}
    result = cr.compare_to_target(a, b, "less")
    assert result["target"] == 0.1 and result["censored"] == (0, 1)
    assert math.isinf(cr.first_reach(b[4], result["target"], "iteration"))
    for axis in cr.AXES:
        assert result[axis]["verdict"] == "reproduced"
        assert result[axis]["low"] == -math.inf < result[axis]["estimate"] <= result[axis]["high"] < 0
    # 25 differences: 5 x -inf (against the diverged run), 6 x -60, 10 x -50, 4 x -40.
    assert (result["iteration"]["estimate"], result["iteration"]["high"]) == (-50, -40)
    assert cr.seeds_cell(result) == "5+5 (0+1 censored)"


def test_cells_show_the_interval_or_why_there_is_none_and_the_pairs_censoring_decides():
    fast = [reaching_at(k) for k in (1, 2, 1, 2, 1)]
    slow = [reaching_at(k) for k in (6, 7, 6, 7, 6)]
    assert cr.cell(cr.compare_to_target(fast, slow, "less"), "iteration") == "**reproduced**: -50 [-60, -40]"
    few = cr.compare_to_target(fast[:3], slow[:3], "less")
    assert cr.cell(few, "iteration") == "**not resolved**: -50, no 95% interval from 3+3 runs"
    # A run that stops at iteration 30 above the target, against 4 runs that reach it at 40-50: the
    # +inf rule orders these 4 pairs, the data do not, and the cell says so. Its pair with the other
    # setting's censored run (a tie) and the pairs with runs that reached before 30 are not counted.
    stopped_early = [reaching_at(k, n=6) for k in (1, 2, 1, 2)] + [curve([1.0, 1.0, 1.0])]
    reaching_later = [reaching_at(k) for k in (3, 4, 3, 4)] + [curve([1.0] * 10)]
    result = cr.compare_to_target(stopped_early, reaching_later, "less")
    assert result["censored"] == (1, 1) and result["iteration"]["assumed"] == 4
    assert cr.cell(result, "iteration").endswith("; order of 4/25 pairs assumed")
    assert cr.compare_to_target(fast, slow, "less")["iteration"]["assumed"] == 0


def test_reaching_means_staying_at_or_below_the_target():
    # Starts below the level, rises above it, then comes back: it has reached the level at iteration 50.
    c = curve([0.5, 2.0, 3.0, 1.5, 0.9, 0.8])
    assert cr.first_reach(c, 1.0, "iteration") == 50
    assert cr.first_reach(c, 1.0, "oracle_cost") == 5000
    assert cr.first_reach(curve([0.5, 2.0]), 1.0, "iteration") == math.inf  # ends above: censored


def test_plateau_is_where_the_curve_stays_within_ten_percent_of_its_total_change():
    iterations = list(range(0, 1000, 10))
    values = [math.exp(-i / 50) for i in iterations]   # falls by 90% of the way by i = 50 ln 10 = 115
    assert cr.plateau(iterations, values) == 120
    assert cr.plateau(iterations, [1 - i / 1000 for i in iterations]) is None   # still falling at the end


def fake_runs(values_by_n, **overrides):
    runs = []
    for n, per_seed in values_by_n.items():
        for seed, values in enumerate(per_seed):
            m = pd.DataFrame({"iteration": [10 * (i + 1) for i in range(len(values))], "time": [i + 1.0 for i in range(len(values))],
                              "oracle/inner_grad_params": [1000.0 * n * (i + 1) for i in range(len(values))],
                              "train/loss": values, "train/grad_sq_mean": values})
            runs.append({"overrides": {"algo.inner_steps": str(n), "seed": str(seed), **overrides}, "status": "completed",
                         "error": "", "summary": {}, "job": f"s{seed}_{n}", "metrics": m})
    return runs


def diverge(run):
    """The run as metarun.train leaves one whose loss became non-finite after its last logged point."""
    it = int(run["metrics"]["iteration"].iloc[-1]) + 3
    return {**run, "status": "failed", "summary": {**run["summary"], "failure": "non_finite"},
            "error": f"training stopped at iteration {it}: non-finite {{'loss': nan, 'grad_norm': nan, 'grad_sq_mean': nan}}; "
                     "lower optim.lr or algo.inner_lr; no checkpoint was written yet"}


def crash(run, error="RuntimeError: non-finite values in the data loader's cache"):
    """The run as metarun.train leaves one that failed on an unrelated exception (which can mention "non-finite" too)."""
    return {**run, "status": "failed", "summary": {**run["summary"], "failure": "exception"}, "error": error}


def without_failure_field(run):
    """The run as metarun.train wrote it before summary.json had `failure`: only the message tells."""
    return {**run, "summary": {k: v for k, v in run["summary"].items() if k != "failure"}}


def test_diverged_runs_are_censored_runs_not_dropped_ones():
    falling = [1.0, 0.2, 0.1, 0.1, 0.1, 0.1]
    slow = [1.0, 1.0, 1.0, 1.0, 1.0, 0.1]
    # Diverged runs that got lower than any completed run before they blew up: they still never reached.
    blew_up = [1.0, 0.05, 0.01, 0.01]
    anil = fake_runs({5: [falling] * 5}, method="anil")
    maml = fake_runs({5: [slow] + [blew_up] * 4}, method="maml")
    maml[1:] = [diverge(r) for r in maml[1:]]
    curves = cr.curves_of(maml, "loss")
    assert len(curves) == 5
    assert [cr.first_reach(c, 1.0, "iteration") for c in curves[1:]] == [math.inf] * 4
    assert [cr.final(c) for c in curves[1:]] == [math.inf] * 4
    # With the diverged runs dropped, MAML had 1 run and the comparison no row at all.
    rows = cr.claim_rows({"anil_vs_maml": anil + maml})
    row = next(r for r in rows if r["comparison"] == "ANIL - MAML, N=5")
    # MAML's median final level is inf: ANIL's (0.12, rolling mean of 5) sets the target, which MAML's
    # one completed run (0.82) ends above.
    assert row["target"] == "training loss <= 0.12"
    assert row["seeds"] == "5+5 (0+4 diverged, 0+1 censored)"
    # Every MAML run is censored: every pairwise difference is -inf, and no pair's order counts as assumed.
    assert row["iterations"] == row["seconds"] == row["oracle cost"] == "**reproduced**: -inf [-inf, -inf]"


def test_a_setting_most_of_whose_runs_diverged_sets_no_target():
    a = [reaching_at(k) for k in (1, 2, 1, 2, 1)]                  # median final level 0.1
    b = [curve([1e20] * 10)] * 2 + [curve([1e20] * 4)] * 3     # the two that completed end at 1e20
    runs_b = fake_runs({20: [list(c["value"]) for c in b]})
    runs_b[2:] = [diverge(r) for r in runs_b[2:]]
    curves_b = cr.curves_of(runs_b, "grad_sq_mean")
    assert statistics.median_high(cr.final(c) for c in curves_b) == math.inf
    # Without the diverged runs, B's 2 survivors would have put the target at 1e20.
    assert cr.target_level(a, curves_b) == 0.1
    assert cr.target_level(a, curves_b[:2]) == 1e20
    result = cr.compare_to_target(a, curves_b, "less")
    assert result["diverged"] == (0, 3) and result["censored"] == (0, 2)
    assert result["iteration"]["verdict"] == "reproduced"
    # The stationarity tables follow the same rule.
    groups = {"A": fake_runs({1: [list(c["value"]) for c in a]}), "B": runs_b}
    text = cr.stationarity_table(groups)
    assert "stays at or below 0.1 (the highest finite one of the settings' median final levels" in text
    assert "| B | 5 | 3 | inf | 0 | inf | inf | inf |" in text


def test_a_row_where_most_runs_of_both_settings_diverged_says_so():
    falling = [1.0, 0.2, 0.1, 0.1, 0.1, 0.1]
    anil = fake_runs({10: [falling] * 5}, method="anil")
    maml = fake_runs({10: [falling] * 5}, method="maml")
    anil[:3] = [diverge(r) for r in anil[:3]]
    maml = [diverge(r) for r in maml]
    row = next(r for r in cr.claim_rows({"anil_vs_maml": anil + maml}) if r["comparison"] == "ANIL - MAML, N=10")
    assert row["target"] == "training loss: no target, most runs of both settings diverged"
    assert row["iterations"] == row["seconds"] == row["oracle cost"] == "no verdict"
    assert row["seeds"] == "5+5 (3+5 diverged)"
    text = cr.stationarity_table({"anil": anil, "maml": maml})
    assert "no target, most runs of every setting diverged" in text and "| maml | 5 | 5 | inf |" in text


def test_a_failure_other_than_divergence_is_left_out_and_listed():
    falling = [1.0, 0.2, 0.1, 0.1, 0.1, 0.1]
    runs = fake_runs({1: [falling] * 5})
    runs[0], runs[1] = crash(runs[0]), diverge(runs[1])
    assert not cr.diverged(runs[0]) and cr.diverged(runs[1])
    # the structured field decides, whatever the message says; old summaries fall back to the message
    assert not cr.diverged({**runs[0], "error": runs[1]["error"]})
    assert cr.diverged({**runs[1], "error": "stopped"})
    assert not cr.diverged(without_failure_field(runs[0])) and cr.diverged(without_failure_field(runs[1]))
    curves = cr.curves_of(runs, "loss")
    assert len(curves) == 4 and sum(map(cr.has_diverged, curves)) == 1
    assert cr.excluded(runs) == [runs[0]]
    notes = cr.failure_notes({"anil_strongly_convex": {"N=1": runs}})
    assert "- `anil_strongly_convex`: N=1: 1 of 5" in notes
    assert ("- `anil_strongly_convex` job s0_1 (N=1, seed 0): **failed** RuntimeError: non-finite values in the data "
            "loader's cache") in notes


def selection_runs(final_losses, alpha):
    """MAML runs of the step-size selection at one alpha: {N: [final validation loss per seed]}; None: diverged."""
    runs = []
    for n, losses in final_losses.items():
        for seed, loss in enumerate(losses):
            m = pd.DataFrame({"iteration": [10, 20, 30], "time": [1.0, 2.0, 3.0], "train/loss": [3.0, 2.0, 1.0],
                              "eval/loss": [9.0, math.nan, 9.0 if loss is None else loss]})  # the last evaluation counts
            run = {"overrides": {"algo.inner_steps": str(n), "algo.inner_lr": str(alpha), "seed": str(5 + seed), "method": "maml"},
                   "status": "completed", "error": "", "summary": {}, "job": f"s{seed}_{n}_{alpha}", "metrics": m}
            runs.append(diverge(run) if loss is None else run)
    return runs


def test_step_selection_takes_the_alpha_without_diverged_runs_whose_worst_n_is_lowest():
    runs = (selection_runs({5: [1.0, 1.2, 1.1], 10: [0.9, 0.8, 1.0]}, 0.01)        # medians 1.1, 0.9: worst 1.1
            + selection_runs({5: [0.7, 0.8, 0.6], 10: [0.5, 0.6, None]}, 0.02)     # lower medians (0.7, 0.6), but a run diverged
            + selection_runs({5: [1.5, 1.4, 1.6], 10: [1.3, 1.2, 1.1]}, 0.005))    # worst 1.5
    alpha, rows = cr.select_inner_lr(runs)
    assert alpha == 0.01
    assert [r["alpha"] for r in rows] == ["0.005", "0.01", "0.02"]
    assert rows[2]["N=10"] == "0.6 (1 of 3 diverged)" and rows[2]["worst N"] == "0.7"
    assert rows[1]["N=5"] == "1.1 (0 of 3 diverged)" and rows[1]["worst N"] == "1.1"
    # Equal worst medians: the larger alpha (fewer iterations to adapt as far).
    tie = selection_runs({5: [1.1, 1.1, 1.1]}, 0.01) + selection_runs({5: [1.0, 1.1, 1.2]}, 0.02)
    assert cr.select_inner_lr(tie)[0] == 0.02
    # No selection while a run has not finished, nor when a run diverged at every alpha.
    unfinished = runs[:-1] + [{**runs[-1], "status": "running"}]
    assert cr.select_inner_lr(unfinished)[0] is None
    assert cr.select_inner_lr(selection_runs({5: [1.0, None, 1.0]}, 0.01) + selection_runs({5: [None, 1.0, 1.0]}, 0.02))[0] is None


def test_claim_3_rows_at_the_selected_step_name_it_beside_those_at_anil_vs_maml_s():
    from omegaconf import OmegaConf

    falling, slow = [1.0, 0.2, 0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0, 0.1, 0.1]
    runs = fake_runs({5: [falling] * 3}, method="anil") + fake_runs({5: [slow] * 3}, method="maml")
    selected = [{**r, "config": OmegaConf.create({"algo": {"inner_lr": 0.01}})} for r in runs]
    rows = cr.claim_rows({"anil_vs_maml": runs, cr.SELECTED_LR: selected})
    assert [(r["data set"], r["comparison"]) for r in rows] == [("linear regression", "ANIL - MAML, N=5"),
                                                                ("linear regression", "ANIL - MAML, N=5, alpha=0.01")]
    assert rows[0]["iterations"] == rows[1]["iterations"]  # the same runs: the same verdict


def test_cost_table_counts_the_iterations_of_diverged_runs():
    # Every MAML run at N=10 diverged: the cost of an iteration is still measured, up to where each stopped.
    anil = fake_runs({10: [[1.0] * 6] * 5}, method="anil")
    maml = [diverge(r) for r in fake_runs({10: [[1.0] * 3] * 5}, method="maml")]
    for r in anil:
        r["summary"] = {"time": 6.0, "iteration": 60}
    rows = cr.cost_ratio_rows(anil + maml)
    assert [r["N"] for r in rows] == [10]
    assert rows[0]["s/iter MAML"] == "0.1 ± 0"   # 3 s over 30 iterations, from the last logged point


def test_claim_rows_compare_the_largest_n_with_the_smallest_on_every_axis():
    falling = [1.0, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    slow = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.15, 0.1, 0.1]
    runs = fake_runs({1: [slow] * 5, 5: [slow] * 5, 20: [falling] * 5})
    rows = cr.claim_rows({"anil_strongly_convex": runs})
    loss = next(r for r in rows if r["target"].startswith("training loss"))
    assert loss["comparison"] == "N=20 - N=1" and loss["data set"] == "linear regression"
    assert loss["iterations"].startswith("**reproduced**")       # fewer iterations at N = 20, identical seeds
    # Rolling mean of 5: N = 20 reaches the target (0.47) at its 3rd point, 60000 oracle cost (20x per
    # iteration); N = 1 at its 10th, 10000. Identical seeds: every pairwise difference is 50000.
    assert loss["oracle cost"] == "**contradicted**: 50000 [50000, 50000]"
    assert loss["seeds"] == "5+5 (0+0 censored)"
    # A row per measure (the gradient-norm row may withhold its verdict: these curves are not running means of
    # squares, whose sums cannot fall, so a spike share of 1 is what they give; see the spike tests below).
    assert {re.split(" <=|:", r["target"])[0] for r in rows} == {"training loss", "mean ‖meta-gradient‖²"}


def test_stationarity_table_gives_medians_and_how_many_runs_reached():
    falling = [1.0, 0.2, 0.1, 0.1, 0.1, 0.1]
    late = [1.0, 1.0, 1.0, 1.0, 0.3, 0.3]
    diverging = [1.0, 10.0, 1e3, 1e6, 1e9, 1e12]
    runs = fake_runs({1: [falling] * 5, 20: [late] * 4 + [diverging]})
    groups = {f"N={n}": cr.select(runs, **{"algo.inner_steps": n}) for n in (1, 20)}
    text = cr.stationarity_table(groups)
    assert "stays at or below 0.3 (the highest finite one of the settings' median final levels" in text
    # N = 20: 4 of 5 reach 0.3 at their 5th logged point (iteration 50, second 5, oracle cost 20 x 1000 x 5);
    # the fifth completed, high: censored, not diverged.
    assert "| N=20 | 5 | 0 | 0.3 | 4 | 50 | 5 | 100000 |" in text
    assert "| N=1 | 5 | 0 | 0.1 | 5 | 20 | 2 | 2000 |" in text


def gradient_run(squared_norms, seed, n=20, log_every=10):
    """A run as metarun.train logs it, from its per-iteration squared meta-gradient norms: at every
    `log_every`-th iteration the norm of that iteration's meta-gradient and the running mean of the squares."""
    its = range(log_every, len(squared_norms) + 1, log_every)
    m = pd.DataFrame({"iteration": list(its), "time": [0.1 * i for i in its], "oracle/inner_grad_params": [100.0 * i for i in its],
                      "train/loss": [1.0 for _ in its], "train/grad_norm": [math.sqrt(squared_norms[i - 1]) for i in its],
                      "train/grad_sq_mean": [statistics.fmean(squared_norms[:i]) for i in its]})
    return {"overrides": {"algo.inner_steps": str(n), "seed": str(seed)}, "status": "completed", "error": "", "summary": {},
            "job": f"s{seed}_{n}", "metrics": m}


def test_stationarity_table_tells_a_running_mean_set_by_one_spike_from_a_settled_level():
    flat = [1.0] * 100
    spike_early = flat[:34] + [1e6] + flat[35:]    # iteration 35: between two logged points, in the window (30, 40]
    spike_late = flat[:89] + [1e6] + flat[90:]     # iteration 90: a logged point in the last fifth
    runs = [gradient_run(g, seed) for seed, g in enumerate([spike_early, spike_early, spike_late, flat, flat])]
    curves = cr.curves_of(runs, "grad_sq_mean")
    # The running mean of a spiky run ends near 1e4, set by that one iteration: its largest window holds
    # (1e6 + 9) of the run's sum (1e6 + 99); a flat run's windows hold 10 of 100 each.
    assert cr.spike_share(curves[0]) == pytest.approx((1e6 + 9) / (1e6 + 99))
    assert cr.spike_share(curves[3]) == pytest.approx(0.1)
    assert cr.final(curves[0]) == pytest.approx((1e6 + 99) / 100)
    # The median of the last fifth's logged squares (iterations 80, 90, 100) is 1 even where 90 logged the spike.
    assert [cr.late_grad_sq(r) for r in runs] == pytest.approx([1.0] * 5)
    assert cr.late_grad_sq(diverge(runs[3])) == math.inf and math.isnan(cr.spike_share(cr.curves_of([diverge(runs[3])], "grad_sq_mean")[0]))
    text = cr.stationarity_table({"N=20": runs})
    # 3 of 5 runs end near 1e4: the median final level is a spike's, the two new columns say so.
    assert "| N=20 | 5 | 0 | 10001 | 5 | 100 | 10 | 10000 | 1 | 1 |" in text
    assert "largest-window share" in text and "last fifth" in text
    # Without the spikes, the same columns read a settled level: each window 0.1 of the sum.
    text = cr.stationarity_table({"N=20": [gradient_run(flat, seed) for seed in range(5)]})
    assert "| N=20 | 5 | 0 | 1 | 5 | 10 | 1 | 1000 | 0.1 | 1 |" in text


def test_a_gradient_norm_verdict_whose_running_mean_one_spike_sets_is_withheld():
    flat = [1.0] * 100
    spiky = flat[:34] + [1e6] + flat[35:]
    small = [gradient_run(flat, seed, n=1) for seed in range(5)]

    def gradient_row(n_spiky):
        large = [gradient_run(spiky if seed < n_spiky else flat, seed, n=20) for seed in range(5)]
        rows = cr.claim_rows({"anil_nonconvex": small + large})
        return next(r for r in rows if "meta-gradient" in r["target"]), next(r for r in rows if "training loss" in r["target"])

    # 3 of 5 runs at N=20 hold more than half their sum in one window: the row gives no verdict and says why.
    row, loss_row = gradient_row(3)
    assert row["target"] == "mean ‖meta-gradient‖²: no verdict, a running mean set by one spike (median largest-window share N=20 1, N=1 0.1)"
    assert row["iterations"] == row["seconds"] == row["oracle cost"] == "no verdict"
    assert loss_row["iterations"] != "no verdict"   # the loss rows of the same runs are untouched
    # 2 of 5: the median run's running mean is its trajectory's, and the verdict is given. The two spiky runs end
    # above the target of 1 (censored): N=20 reaches it later, as claim 2 says, but 3 equal runs of 5 leave it unresolved.
    row, _ = gradient_row(2)
    assert row["target"] == "mean ‖meta-gradient‖² <= 1"
    assert row["iterations"].startswith("**not resolved**: 0 [") and row["seeds"] == "5+5 (2+0 censored)"


def test_sweep_paths_are_shown_relative_to_the_checkout_that_holds_them():
    sweep = Path("/elsewhere/main/outputs/convergence/p")
    assert cr.repo_relative("Sweep: `/elsewhere/main/outputs/convergence/p`;", sweep) == "Sweep: `outputs/convergence/p`;"
    full = Path("/elsewhere/main/outputs/convergence/full/p")  # a full sweep sits one level deeper
    assert cr.repo_relative(f"Sweep: `{full}`;", full) == "Sweep: `outputs/convergence/full/p`;"
    assert cr.repo_relative(f"Sweep: `{cr.REPO}/outputs/convergence/p`", Path("/tmp/w")) == "Sweep: `outputs/convergence/p`"


def test_template_oracle_table_lists_exactly_the_counts_the_code_logs():
    """The prose that once said ANIL's Jacobian-vector products were not logged: its table must name every
    key MAML.oracle_calls returns, and nothing else."""
    import torch

    from metarun.algos.maml import MAML
    from test_inner_loop import REGRESSION

    model = torch.nn.Sequential()
    model.body, model.head = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    keys = {k for k in MAML(model, None, REGRESSION, ["head.*"], 2, 0.1).oracle_calls(4) if not k.endswith("_params")}
    text = (REPO / "docs" / "src" / "convergence.md").read_text()
    oracle_section = text.split("## Oracle accounting")[1]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", oracle_section, flags=re.M))
    assert documented == keys
    assert "not logged" not in text.lower() and "the same for both by construction" not in text


def test_template_holds_no_measured_number_and_the_script_fills_every_placeholder(tmp_path, monkeypatch):
    text = (REPO / "docs" / "src" / "convergence.md").read_text()
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert placeholders == {"scales", "kept", "verdicts", "failed_runs", "timings", "targets", "quadratic_error", "quadratic_1d", "claim3_costs",
                            *cr.PRESETS[1:]}
    # Measured quantities only come from blocks: no "x.y s", "x min" or percentages typed into the prose.
    assert not re.findall(r"\d+(\.\d+)? ?(s|min|seconds|minutes)\b(?! x)", text.replace("30 seconds", ""))
    # With no runs at all, the script still renders a complete document (every block says "not run").
    monkeypatch.setattr(cr, "REPO", REPO)
    cr.write_doc(tmp_path / "work", tmp_path / "docs")
    out = (tmp_path / "docs" / "convergence.md").read_text()
    assert "{{" not in out and "not run" in out


@pytest.mark.slow  # two tiny sweeps through the CLI, then the whole document
def test_document_from_tiny_sweeps(tmp_path, monkeypatch):
    work = tmp_path / "work"
    tiny = ["iterations=12", "eval_every=6", "log_every=2", "eval_tasks=4", "meta_batch_size=4", "hydra/launcher=basic", "threads=1"]
    for preset, extra in (("anil_strongly_convex", ["seed=0,1", "algo.inner_steps=1,5"]),
                          ("anil_vs_maml", ["seed=0,1", "algo.inner_steps=1"]),
                          (cr.LR_SELECTION, ["seed=5", "algo.inner_steps=5", "algo.inner_lr=0.01,0.02"])):
        result = run_metarun("-m", f"+experiment={preset}", *tiny, *extra, f"hydra.sweep.dir={work / preset}", cwd=REPO)
        assert result.returncode == 0, result.stderr[-2000:]
        cr.run_reports(work / preset)
    cr.write_doc(work, tmp_path / "docs")
    out = (tmp_path / "docs" / "convergence.md").read_text()
    assert "| 1. strongly convex: faster with larger N | linear regression | quick | N=5 - N=1 |" in out
    assert "| 3. ANIL cheaper than MAML | linear regression | quick | ANIL - MAML, N=1 |" in out
    assert "| full |" not in out and "Scale: quick (`scale=full` not run yet)." in out
    # The step selection: MAML's final validation loss per alpha, and the alpha its rule picks.
    selection = out.split("(presets `anil_vs_maml_lr_selection`, `anil_vs_maml_selected_lr`)")[1].split("###")[0]
    assert "Scale: quick (a selection sweep: it runs at quick scale only)." in selection
    assert "| alpha | N=5 | worst N |" in selection and "| 0.01 | " in selection and "(0 of 1 diverged)" in selection
    assert re.search(r"The rule selects \*\*alpha = 0\.0[12]\*\*; `anil_vs_maml_selected_lr` runs at alpha = ", selection)
    verdicts = re.findall(r"\*\*(reproduced|contradicted|not resolved)\*\*", out)
    assert verdicts and "{{" not in out
    for table in re.findall(r"((?:^\|.*\|\n)+)", out, flags=re.M):  # no cell breaks its table (a stray "|")
        assert len({line.count("|") for line in table.splitlines()}) == 1, table
    assert (tmp_path / "docs" / "convergence" / "anil_strongly_convex_grad_sq_mean.png").is_file()
    assert (tmp_path / "docs" / "convergence" / "anil_strongly_convex_plateau.png").is_file()

    # A full sweep (here the same 4 jobs, declared as the whole full sweep) replaces the quick one in
    # its section, and adds its own verdict and timing rows beside the quick ones.
    monkeypatch.setattr(cr, "declared_jobs", lambda preset, scale: 4)
    full = cr.sweep_path(work, "anil_strongly_convex", "full")
    shutil.copytree(work / "anil_strongly_convex", full)
    cr.write_doc(work, tmp_path / "docs")
    out = (tmp_path / "docs" / "convergence.md").read_text()
    section = out.split("### Linear regression (preset `anil_strongly_convex`)")[1].split("###")[0]
    assert "Scale: **full** (`scale=full`, 4 runs)" in section
    for scale in ("quick", "full"):
        assert f"| 1. strongly convex: faster with larger N | linear regression | {scale} | N=5 - N=1 |" in out
        assert f"| anil_strongly_convex | {scale} | 4 completed of 4 declared |" in out

    # A full sweep timed in two parts: on two processors (or one not recorded), its seconds cells say so; on one, not.
    def seconds_cells(page, scale):
        rows = [line.split(" | ") for line in page.splitlines() if line.startswith("| 1. strongly convex") and f"| {scale} |" in line]
        return [row[6] for row in rows]

    part = {"seeds": "all", "exit_code": 0, "wall_seconds": 60.0, "interrupted": False, "machine_share": 0.99, "cpus": 2,
            "load_before": 0.1, "load_after": 2.0, "started": "2026-11-28T15:02:01", "jobs_at_once": 2}
    for cpus, marked in ((["CPU A", "CPU B"], True), (["CPU A", None], True), (["CPU A", "CPU A"], False)):
        (full / "timing.json").write_text(json.dumps([{**part, "cpu": cpu} for cpu in cpus]))
        cr.write_doc(work, tmp_path / "docs")
        out = (tmp_path / "docs" / "convergence.md").read_text()
        cells = seconds_cells(out, "full")
        assert any(c != "no verdict" for c in cells)
        assert all(c.endswith(cr.UNMATCHED) == (marked and c != "no verdict") for c in cells), cells
        assert not any(c.endswith(cr.UNMATCHED) for c in seconds_cells(out, "quick"))  # the quick sweep ran in one part
        shown = "; ".join(sorted(c or "not recorded" for c in set(cpus)))
        assert f"| anil_strongly_convex | full | 4 completed of 4 declared | 2 | 1 | alone | {shown} | 2 in 2 parts |" in out
    assert "| 3. ANIL cheaper than MAML | linear regression | full |" not in out  # no full anil_vs_maml sweep
    assert "Sections shown at full scale: `anil_strongly_convex`" in out
    # One job of the full sweep not finished: the section falls back to quick and says how far the full sweep got.
    job = next(d for d in full.iterdir() if (d / "summary.json").is_file())
    summary = json.loads((job / "summary.json").read_text())
    (job / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    cr.write_doc(work, tmp_path / "docs")
    out = (tmp_path / "docs" / "convergence.md").read_text()
    assert "Scale: quick. The full sweep (`scale=full`) has run 3 of its 4 runs" in out
    assert "| full |" not in out


def test_a_resumed_sweep_keeps_its_runs_and_adds_a_timing_part(tmp_path, monkeypatch):
    # run_sweep's bookkeeping only (metarun -m ... resume=true itself: tests/test_cli.py).
    commands = []

    def fake_run(cmd, log, env, cwd):
        commands.append(cmd)
        killed = "seed=4" in cmd  # the part a session ends with: interrupted (docgen.timed_run returns its time so far)
        return {"command": " ".join(cmd), "exit_code": 130 if killed else 0, "wall_seconds": 60.0 * len(commands), "cpu_slots": "2",
                "cpus": 2, "interrupted": killed}

    monkeypatch.setattr(cr, "timed_run", fake_run)
    sweep = tmp_path / "anil_nonconvex"
    cr.run_sweep("anil_nonconvex", "full", sweep, tmp_path, resume=True)  # nothing to resume yet: starts it
    assert "resume=true" not in commands[0]
    (sweep / "multirun.yaml").write_text("{}")  # what metarun -m leaves
    (sweep / "s0_0").mkdir()  # a job the first part left (killed, say)
    cr.run_sweep("anil_nonconvex", "full", sweep, tmp_path, resume=True)
    assert (sweep / "s0_0").is_dir() and "resume=true" in commands[1] and "resume=true" not in commands[0]
    parts = json.loads((sweep / "timing.json").read_text())
    assert [p["wall_seconds"] for p in parts] == [60.0, 120.0] and parts[1]["resumed"]
    cr.run_sweep("anil_nonconvex", "full", sweep, tmp_path)  # anew: the old sweep goes, its timing with it
    assert not (sweep / "s0_0").exists()
    assert [p["wall_seconds"] for p in json.loads((sweep / "timing.json").read_text())] == [180.0]
    # An interrupted part is recorded before the interruption goes on (it stops the campaign).
    with pytest.raises(KeyboardInterrupt):
        cr.run_sweep("anil_nonconvex", "full", sweep, tmp_path, seeds="4")
    parts = json.loads((sweep / "timing.json").read_text())
    assert [(p["seeds"], p["wall_seconds"], p["interrupted"]) for p in parts] == [("all", 180.0, False), ("4", 240.0, True)]
    # Every declared job finished (completed or diverged): --resume has nothing to run and adds no part.
    (sweep / "multirun.yaml").write_text("{}")
    job = sweep / "s4_0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=4\n")
    (job / "summary.json").write_text(json.dumps({"status": "completed"}))
    monkeypatch.setattr(cr, "declared_jobs", lambda preset, scale: 1)
    assert cr.run_sweep("anil_nonconvex", "full", sweep, tmp_path, resume=True) is None
    assert len(commands) == 4 and json.loads((sweep / "timing.json").read_text()) == parts


def fake_job(sweep, name, status, seed):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
    (job / "summary.json").write_text(json.dumps({"status": status, "iteration": 40}))
    (job / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "train/loss": 1 / (i + 1)}) + "\n" for i in range(0, 40, 10)))
    for checkpoint in ("checkpoint.pt", "best.pt"):
        (job / checkpoint).write_bytes(b"weights of " + name.encode())
    return job


def test_kept_run_data_rebuilds_a_sweep_and_resumes_its_unfinished_jobs(tmp_path, capsys):
    sweep = tmp_path / "work" / "full" / "anil_nonconvex"
    done, killed = fake_job(sweep, "s0_0", "completed", 0), fake_job(sweep, "s1_1", "interrupted", 1)
    (sweep / "multirun.yaml").write_text("{}")
    (sweep / "timing.json").write_text("[]")
    (sweep / "report").mkdir()
    (sweep / "report" / "summary.csv").write_text("x\n")
    (done / "wandb").mkdir()
    (done / "wandb" / "run.wandb").write_text("x")
    kept = cr.archive_path(tmp_path / "docs", "anil_nonconvex", "full")
    assert cr.archive_sweep(sweep, kept) == kept and list(kept.parent.iterdir()) == [kept]  # no temporary file left
    first = kept.read_bytes()
    cr.archive_sweep(sweep, kept)
    assert kept.read_bytes() == first  # an unchanged sweep gives the same bytes: no churn in git
    # The page says which of its sweeps can be rebuilt from kept data, and which exist only in the work dir.
    (tmp_path / "work" / "anil_nonconvex").mkdir()
    (tmp_path / "work" / "anil_nonconvex" / "multirun.yaml").write_text("{}")
    text = cr.kept_text(tmp_path / "work", tmp_path / "docs")
    assert text.startswith("Kept: 1 sweep (") and text.endswith(": `anil_nonconvex` (full). Not kept (in this work dir only): `anil_nonconvex`.")

    other = tmp_path / "fresh" / "full" / "anil_nonconvex"
    assert cr.restore_sweep(kept, other)
    files = sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file())
    assert files == ["multirun.yaml", "s0_0/.hydra/overrides.yaml", "s0_0/metrics.jsonl", "s0_0/summary.json",
                     "s1_1/.hydra/overrides.yaml", "s1_1/best.pt", "s1_1/checkpoint.pt", "s1_1/metrics.jsonl", "s1_1/summary.json",
                     "timing.json"]
    assert (other / "s1_1" / "checkpoint.pt").read_bytes() == (killed / "checkpoint.pt").read_bytes()
    assert cr.finished_jobs(other) == 1 and [r["job"] for r in cr.load_runs(other)] == ["s0_0", "s1_1"]
    # A work dir that has the sweep keeps its own runs; no archive, nothing to restore.
    (other / "s0_0" / "metrics.jsonl").write_text("local\n")
    assert not cr.restore_sweep(kept, other) and (other / "s0_0" / "metrics.jsonl").read_text() == "local\n"
    assert not cr.restore_sweep(tmp_path / "none.tar.xz", tmp_path / "elsewhere") and not (tmp_path / "elsewhere").exists()
    # A corrupt archive: one line naming it, exit 2, and no half-unpacked sweep.
    kept.write_bytes(first[: len(first) // 2])
    with pytest.raises(SystemExit) as exit_:
        cr.restore_sweep(kept, tmp_path / "third")
    assert exit_.value.code == 2 and str(kept) in capsys.readouterr().err
    assert not any(p.name.startswith("third") for p in tmp_path.iterdir())


def test_every_sweep_run_is_kept_even_an_interrupted_one_and_a_fresh_checkout_gets_it_back(tmp_path, monkeypatch, capsys):
    def fake_run(cmd, log, env, cwd):  # a session that ends while a job runs: metarun leaves a killed job behind
        sweep = Path(next(c for c in cmd if c.startswith("hydra.sweep.dir=")).split("=", 1)[1])
        (sweep / "multirun.yaml").write_text("{}")
        fake_job(sweep, "s0_0", "interrupted", 0)
        return {"command": " ".join(cmd), "exit_code": 130, "wall_seconds": 60.0, "cpu_slots": "2", "cpus": 2, "interrupted": True}

    reported = []
    monkeypatch.setattr(cr, "timed_run", fake_run)
    monkeypatch.setattr(cr, "run_reports", reported.append)
    args = ["--presets", "anil_nonconvex", "--scale", "full", "--resume", "--no-doc", "--work-dir", str(tmp_path / "work"),
            "--docs", str(tmp_path / "docs")]
    monkeypatch.setattr(sys, "argv", ["convergence_report.py", *args])
    with pytest.raises(SystemExit) as exit_:  # the interruption told in one line, exit 130, no traceback
        cr.cli()
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
    kept = cr.archive_path(tmp_path / "docs", "anil_nonconvex", "full")
    assert kept.is_file() and reported == []
    shutil.rmtree(tmp_path / "work")  # a fresh checkout: the work dir is gone, the kept data is not
    monkeypatch.setattr(sys, "argv", ["convergence_report.py", *args, "--skip-runs"])
    cr.main()
    sweep = tmp_path / "work" / "full" / "anil_nonconvex"
    assert reported == [sweep] and (sweep / "s0_0" / "checkpoint.pt").is_file()
    assert json.loads((sweep / "timing.json").read_text())[0]["interrupted"]
