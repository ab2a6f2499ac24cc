"""Learned adapt rules (issue 14): Meta-SGD, Sparse-MAML gradient masks and threshold masks.

Hand-computed inner steps, straight-through gradients by hand and against finite differences,
open masks reducing exactly to MAML, frozen entries that never move, first-order training,
checkpoints, resume, best.pt, load_learner, mode=eval and bad input.
"""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO, run_metarun
from metarun.algos.maml import MAML
from metarun.config import RULES, ConfigError, DataError, validate
from metarun.inner_loop import ADAPT_RULES, GradientMask, MetaSGD, ThresholdMask, adapt, make_adapt_rule, task_functions
from metarun.models.conv4 import Conv4
from metarun.models.linear import LinearFeatures
from metarun.models.mlp import MLP
from metarun.train import run
from test_inner_loop import CLASSIFICATION, REGRESSION, image_batch, quadratic_batch

LEARNED = ["meta_sgd", "sparse", "threshold"]


def make_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["progress=false", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def linear_model(seed=0, d=4, k=3):
    torch.manual_seed(seed)
    return LinearFeatures((d,), 1, features=k).double()


def set_rule(rule, values):
    with torch.no_grad():
        for name, value in values.items():
            rule.value(name).copy_(value)


# ------------------------------------------------------------------ the inner step

def hand_gradient(B, w, x, y, l2=0.0):
    """d/d(B, w) of mean_i (w . B x_i - y_i)^2 + l2 (|B|^2 + |w|^2), by hand (w: (1, k), B: (k, d))."""
    r = (x @ B.T @ w.T - y)[:, 0]  # residuals (n,)
    n = len(r)
    g_w = 2 / n * (r[:, None] * (x @ B.T)).sum(0, keepdim=True) + 2 * l2 * w
    g_B = 2 / n * w.T * (r[:, None] * x).sum(0, keepdim=True) + 2 * l2 * B
    return g_B, g_w


def test_meta_sgd_inner_steps_equal_hand_computed_steps():
    model = linear_model()
    rule = make_adapt_rule("meta_sgd", model, ["body.1.weight", "head.weight"], 0.1)
    g = torch.Generator().manual_seed(1)
    alphas = {"body.1.weight": torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.2 - 0.05,  # some negative
              "head.weight": torch.rand(1, 3, generator=g, dtype=torch.float64) * 0.3}
    set_rule(rule, alphas)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(6, 4, dtype=torch.float64, generator=g), torch.randn(6, 1, dtype=torch.float64, generator=g)
    _, predict = task_functions(model, params, list(params))
    fast = adapt(lambda p: F.mse_loss(predict(p, x), y), dict(params), 2, rule.learning_rates(params, 0.1), l2=0.3)
    B, w = params["body.1.weight"], params["head.weight"]
    for _ in range(2):  # theta <- theta - alpha * grad, entry by entry, twice
        g_B, g_w = hand_gradient(B, w, x, y, l2=0.3)
        B, w = B - alphas["body.1.weight"] * g_B, w - alphas["head.weight"] * g_w
    torch.testing.assert_close(fast["body.1.weight"], B, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast["head.weight"], w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["sparse", "threshold"])
def test_frozen_entries_get_no_inner_update_and_open_ones_move(name):
    model = linear_model(seed=2)
    adapted = ["body.1.weight", "head.weight"]
    rule = make_adapt_rule(name, model, adapted, 0.1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    if name == "sparse":
        set_rule(rule, {n: torch.randn(params[n].shape, generator=g, dtype=torch.float64) for n in adapted})
        frozen = {n: rule.value(n) <= 0 for n in adapted}
    else:  # thresholds between the two middle magnitudes of each tensor: about half the entries frozen
        cut = {n: params[n].abs().flatten().sort().values[params[n].numel() // 2 - 1:][:2].mean() for n in adapted}
        set_rule(rule, {n: torch.logit(cut[n]).expand_as(params[n]) for n in adapted})
        frozen = {n: params[n].abs() < cut[n] for n in adapted}
    assert all(f.any() and not f.all() for f in frozen.values())
    rates = rule.learning_rates(params, 0.1)
    for n in adapted:  # the forward of the straight-through step: inner_lr * 1[open]
        assert torch.equal(rates[n], 0.1 * (~frozen[n]).double())
    x, y = torch.randn(6, 4, dtype=torch.float64, generator=g), torch.randn(6, 1, dtype=torch.float64, generator=g)
    _, predict = task_functions(model, params, adapted)
    fast = adapt(lambda p: F.mse_loss(predict(p, x), y), {n: params[n] for n in adapted}, 3, rates, l2=0.5)
    for n in adapted:
        assert torch.equal(fast[n][frozen[n]], params[n][frozen[n]])  # bit for bit, the L2 term included
        assert (fast[n][~frozen[n]] != params[n][~frozen[n]]).all()
    # The density the run logs: the share of each tensor that adapts.
    shares = rule.density(dict(model.named_parameters()))
    for n in adapted:
        assert shares[f"density/{n}"].item() == pytest.approx((~frozen[n]).double().mean().item())
    assert shares["density"].item() == pytest.approx(sum((~f).sum().item() for f in frozen.values()) / 15)


def test_straight_through_gradients_of_the_rule_tensors_by_hand():
    """d F / d(rule tensor) for F = sum(c * rates): Meta-SGD c; Sparse-MAML's identity estimator
    inner_lr * c (also through closed entries); the threshold's tanh estimator
    -sigmoid'(s) * tanh(inner_lr * c)."""
    model = linear_model(seed=4)
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(5)
    c = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) * 30 for n, p in params.items()}  # large: tanh saturates
    for name in LEARNED:
        rule = make_adapt_rule(name, model, list(params), 0.1)
        with torch.no_grad():
            for n in params:  # a mix of open and closed entries
                rule.value(n).copy_(torch.randn(params[n].shape, generator=g, dtype=torch.float64) * (3 if name == "threshold" else 1))
        rates = rule.learning_rates(params, 0.1)
        sum((c[n] * rates[n]).sum() for n in params).backward()
        for n in params:
            v = rule.value(n).detach()
            expected = {"meta_sgd": c[n], "sparse": 0.1 * c[n],
                        "threshold": -torch.sigmoid(v) * (1 - torch.sigmoid(v)) * torch.tanh(0.1 * c[n])}[name]
            torch.testing.assert_close(rule.value(n).grad, expected, rtol=1e-12, atol=1e-15)


def meta_loss_of_rates(algo, batch):
    """The meta-loss as a function of per-parameter inner rates (what every rule produces)."""
    params = dict(algo.model.named_parameters())

    def f(*rates):
        lr = dict(zip(algo.adapted, rates))
        per_task = [algo.task_loss(params, lr, *(t[i] for t in batch))["loss"] for i in range(len(batch[0]))]
        return torch.stack(per_task).mean()

    return f


@pytest.mark.parametrize("steps,first_order", [(2, False), (1, True)])
def test_meta_sgd_rate_gradient_matches_finite_differences(steps, first_order):
    """Second order through two steps; first order with one step, where it is exact (see below)."""
    torch.manual_seed(6)
    model = MLP((4,), 1, hidden=[5]).double()
    algo = MAML(model, torch.optim.SGD(model.parameters(), lr=0.1), REGRESSION, ["*"], steps, 0.1, first_order=first_order,
                adapt_rule="meta_sgd")
    batch = quadratic_batch(tasks=3, n=6, d=4)
    alphas = [torch.rand(algo.adapt_rule.value(n).shape, dtype=torch.float64) * 0.2 for n in algo.adapted]
    f = meta_loss_of_rates(algo, batch)
    # The gradient of the meta-loss in alpha: autograd equals central differences.
    assert torch.autograd.gradcheck(f, [a.requires_grad_() for a in alphas], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_sparse_and_threshold_gradients_are_the_rate_gradient_through_their_estimators():
    torch.manual_seed(7)
    model = MLP((4,), 1, hidden=[5]).double()
    batch = quadratic_batch(tasks=3, n=6, d=4)
    inner_lr = 0.1
    grads = {}
    for name in ("sparse", "threshold", "meta_sgd"):
        algo = MAML(model, torch.optim.SGD(model.parameters(), lr=0.1), REGRESSION, ["*"], 2, inner_lr, adapt_rule=name)
        g = torch.Generator().manual_seed(8)
        if name != "meta_sgd":  # a mix of open and closed masks
            set_rule(algo.adapt_rule, {n: torch.randn(p.shape, generator=g, dtype=torch.float64) * (2 if name == "threshold" else 1)
                                       for n, p in model.named_parameters()})
        else:  # Meta-SGD at the rates the sparse rule uses: inner_lr * mask
            masks = {n: (r > 0).double() for n, r in grads["sparse"]["values"].items()}
            set_rule(algo.adapt_rule, {n: inner_lr * m for n, m in masks.items()})
        model.zero_grad()
        algo.meta_loss(batch)["loss"].backward()
        grads[name] = {"values": {n: algo.adapt_rule.value(n).detach().clone() for n, _ in model.named_parameters()},
                       "grad": {n: algo.adapt_rule.value(n).grad.clone() for n, _ in model.named_parameters()}}
    # Sparse-MAML: d L / d mu = inner_lr * d L / d rate at rate = inner_lr * 1[mu > 0] (identity estimator).
    for n in grads["sparse"]["grad"]:
        torch.testing.assert_close(grads["sparse"]["grad"][n], inner_lr * grads["meta_sgd"]["grad"][n], rtol=1e-10, atol=1e-14)
    assert any(g.abs().max() > 0 for g in grads["sparse"]["grad"].values())


@pytest.mark.parametrize("name", LEARNED)
def test_rules_at_their_start_reduce_exactly_to_maml(name):
    """With every mask open (Meta-SGD: alpha = inner_lr) theta's meta-gradient is MAML's, on conv4
    with BatchNorm, second order, two inner steps."""
    torch.manual_seed(9)
    model = Conv4((1, 12, 12), 3, channels=6, blocks=2).double()
    with torch.no_grad():  # no exactly-zero entry (BatchNorm shifts start at 0): threshold masks would close them
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = tuple(t.double() if t.is_floating_point() else t for t in image_batch())
    grads, losses = {}, {}
    for rule in ("fixed", name):
        algo = MAML(model, torch.optim.SGD(model.parameters(), lr=0.1), CLASSIFICATION, ["*"], 2, 0.3, adapt_rule=rule)
        if rule != "fixed":
            assert algo.adapt_rule.density(dict(model.named_parameters())).get("density", torch.tensor(1.0)) == 1
        model.zero_grad()
        loss = algo.meta_loss(batch)["loss"]
        loss.backward()
        losses[rule], grads[rule] = loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}
    torch.testing.assert_close(losses[name], losses["fixed"], rtol=1e-13, atol=0)
    for k in grads["fixed"]:
        torch.testing.assert_close(grads[name][k], grads["fixed"][k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", LEARNED)
def test_first_order_rules_still_learn_and_one_step_gets_the_exact_gradient(name):
    """Detaching the inner gradients does not detach the rates (theta' = theta - rate * g), so a
    learned rule trains under algo.first_order=true; with one inner step its gradient is the
    second-order one exactly (the rate never enters a gradient that is differentiated)."""
    torch.manual_seed(10)
    model = MLP((4,), 1, hidden=[5]).double()
    batch = quadratic_batch(tasks=3, n=6, d=4)
    for steps in (1, 2):
        grads = {}
        for first_order in (False, True):
            algo = MAML(model, torch.optim.SGD(model.parameters(), lr=0.1), REGRESSION, ["*"], steps, 0.1,
                        first_order=first_order, adapt_rule=name)
            algo.adapt_rule.zero_grad()
            algo.meta_loss(batch)["loss"].backward()
            grads[first_order] = torch.cat([p.grad.flatten() for p in algo.adapt_rule.parameters()])
        assert grads[True].abs().max() > 1e-6
        if steps == 1:
            torch.testing.assert_close(grads[True], grads[False], rtol=1e-12, atol=1e-16)
        else:  # later steps' gradients depend on the rates: the Hessian terms differ
            assert not torch.allclose(grads[True], grads[False], rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------ the algorithm and the runner

def test_rule_tensors_train_in_their_own_group_without_weight_decay():
    model = linear_model().float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003, weight_decay=0.1)
    algo = MAML(model, optimizer, REGRESSION, ["*"], 1, 0.05, adapt_rule="sparse", rule_lr=0.02)
    assert len(optimizer.param_groups) == 2
    group = optimizer.param_groups[1]
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.0
    assert [id(p) for p in group["params"]] == [id(p) for p in algo.adapt_rule.parameters()]
    model = linear_model().float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    MAML(model, optimizer, REGRESSION, ["*"], 1, 0.05, adapt_rule="meta_sgd")
    assert optimizer.param_groups[1]["lr"] == 0.003  # rule_lr null: optim.lr


def test_rule_inits_start_open_and_rule_init_overrides():
    model = linear_model()
    names = ["body.1.weight", "head.weight"]
    assert all((make_adapt_rule("meta_sgd", model, names, 0.07).value(n) == 0.07).all() for n in names)
    assert all((make_adapt_rule("sparse", model, names, 0.07).value(n) == 0.1).all() for n in names)
    assert all((make_adapt_rule("threshold", model, names, 0.07).value(n) == -10).all() for n in names)
    assert all((make_adapt_rule("sparse", model, names, 0.07, init=-0.5).value(n) == -0.5).all() for n in names)
    for name in ("sparse", "threshold"):
        assert make_adapt_rule(name, model, names, 0.07).density(dict(model.named_parameters()))["density"] == 1


def test_step_logs_per_layer_density_and_meta_sgd_rates(tmp_path):
    cfg = make_cfg("task=linear_regression", "model=linear", "algo.adapt_rule=sparse", "algo.rule_init=0.01",
                   "algo.rule_lr=0.01", "iterations=6", "log_every=1", "eval_every=6", "eval_tasks=4", "eval_steps=1")
    run(cfg, tmp_path / "sparse")
    rows = [json.loads(line) for line in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    state = torch.load(tmp_path / "sparse" / "checkpoint.pt", weights_only=True)["algo"]["adapt_rule"]
    for name in ("body.1.weight", "head.weight"):
        mu = state["values." + name.replace(".", "/")]
        assert last[f"train/density/{name}"] == pytest.approx((mu > 0).float().mean().item())
    assert all((mu != 0.01).all() for mu in state.values())  # the outer optimizer trained every mu
    assert all("train/density" in r for r in rows[1:]) and "train/density" not in rows[0]  # iteration 0: before any step
    cfg = make_cfg("task=linear_regression", "model=linear", "algo.adapt_rule=meta_sgd", "iterations=3", "log_every=1",
                   "eval_every=3", "eval_tasks=4", "eval_steps=1")
    run(cfg, tmp_path / "meta_sgd")
    last = [json.loads(line) for line in (tmp_path / "meta_sgd" / "metrics.jsonl").read_text().splitlines()][-1]
    alpha = torch.load(tmp_path / "meta_sgd" / "checkpoint.pt", weights_only=True)["algo"]["adapt_rule"]["values.head/weight"]
    assert last["train/lr/head.weight"] == pytest.approx(alpha.mean().item())
    assert last["train/lr_abs/head.weight"] == pytest.approx(alpha.abs().mean().item())


FAST = ["task=linear_regression", "model=linear", "iterations=12", "eval_every=4", "log_every=2", "checkpoint_every=4",
        "eval_tasks=10", "eval_steps=2", "algo.inner_steps=2", "algo.inner_lr=0.05", "optim.lr=0.01", "algo.rule_lr=0.05"]
RULE_START = {"meta_sgd": [], "sparse": ["algo.rule_init=0.05"], "threshold": ["algo.rule_init=-2.5"]}


@pytest.mark.parametrize("name", LEARNED)
def test_resume_with_a_learned_rule_equals_the_uninterrupted_run(tmp_path, monkeypatch, name):
    from test_resume import check_resume_equals_uninterrupted

    overrides = [*FAST, f"algo.adapt_rule={name}", *RULE_START[name], "test_checkpoint=best"]
    full, _ = check_resume_equals_uninterrupted(tmp_path, monkeypatch, MAML, overrides, 7)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    key = "train/lr/head.weight" if name == "meta_sgd" else "train/density"
    assert len({r[key] for r in rows if key in r}) > 1  # the rule changed during the run, so its state mattered


@pytest.mark.parametrize("name", ["sparse", "threshold"])
def test_best_pt_load_learner_and_eval_mode_use_the_learned_masks(tmp_path, name):
    from metarun.learner import evaluate_run, load_learner

    run_dir = tmp_path / "run"
    cfg = make_cfg(*FAST, f"algo.adapt_rule={name}", *RULE_START[name], "test_checkpoint=best")
    summary = run(cfg, run_dir)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    learner = load_learner(run_dir)  # the run tested best.pt, so the learner loads it
    assert learner.checkpoint == "best.pt"
    for key, value in best["algo"]["adapt_rule"].items():
        assert torch.equal(learner.adapt_rule.state_dict()[key], value)
    learner = load_learner(run_dir, checkpoint="checkpoint.pt")
    for key, value in last["algo"]["adapt_rule"].items():
        assert torch.equal(learner.adapt_rule.state_dict()[key], value)
    # Adapting with the learner moves only the entries the learned masks leave open.
    params = {k: v.detach() for k, v in learner.model.named_parameters()}
    rates = learner.adapt_rule.learning_rates(params, learner.inner_lr)
    frozen = {k: r == 0 for k, r in rates.items()}
    assert any(f.any() for f in frozen.values()), "no mask closed in this run: the check below would be empty"
    sx, sy, qx, qy = (t[0] for t in learner.task.sample(1, torch.Generator().manual_seed(0), "test"))
    learner.adapt(sx, sy, steps=3)
    for k, f in frozen.items():
        assert torch.equal(learner.fast[k][f], params[k][f])
        assert (learner.fast[k][~f] != params[k][~f]).any()
    # mode=eval with the run's own settings reproduces its final test figures (the masks are loaded).
    eval_cfg = make_cfg(*FAST, f"algo.adapt_rule={name}", *RULE_START[name], "test_checkpoint=best", "mode=eval",
                        f"run_dir={run_dir}")
    evaluated = evaluate_run(eval_cfg, tmp_path / "eval")
    assert evaluated["test/loss"] == summary["test/loss"]
    # ... and evaluating the same parameters with every mask open (MAML's inner loop) differs.
    open_cfg = make_cfg(*FAST, "mode=eval", f"run_dir={run_dir}", "test_checkpoint=best")
    with pytest.raises(DataError, match="another algo.adapt_rule"):
        evaluate_run(open_cfg, tmp_path / "eval_fixed")


def test_zero_initialised_head_keeps_the_learned_body_masks_and_adapts(tmp_path):
    """Another number of ways: the new head is zero (a threshold mask would freeze a zero head
    forever), so it steps at the plain inner lr while the body keeps its learned masks."""
    from metarun.learner import Learner, load_algo_state

    torch.manual_seed(11)
    model = Conv4((1, 12, 12), 3, channels=6, blocks=2)
    algo = MAML(model, torch.optim.Adam(model.parameters()), CLASSIFICATION, ["*"], 1, 0.3, adapt_rule="threshold")
    params = dict(model.named_parameters())
    with torch.no_grad():  # close half of every body tensor
        for n in algo.adapted:
            algo.adapt_rule.value(n).copy_(torch.logit(params[n].detach().abs().median().clamp(1e-4, 0.99)).expand_as(params[n]))
    state = {"model": model.state_dict(), "algo": algo.state_dict()}
    # A 5-way model built from the 3-way checkpoint: head zero-initialised, the rule loaded in its trained shapes.
    new = Conv4((1, 12, 12), 5, channels=6, blocks=2)
    new_algo = MAML(new, torch.optim.Adam(new.parameters()), CLASSIFICATION, ["*"], 1, 0.3, adapt_rule="threshold")
    zeroed = ["head.weight", "head.bias"]
    new.load_state_dict({**state["model"], **{k: torch.zeros_like(v) for k, v in new.state_dict().items() if k in zeroed}})
    load_algo_state(new_algo, state, zeroed)
    rates = new_algo.adapt_rule.learning_rates(dict(new.named_parameters()), 0.3)
    old = algo.adapt_rule.learning_rates(params, 0.3)
    for n in algo.adapted:
        if n in zeroed:
            assert rates[n] == 0.3  # the plain inner lr
        else:
            assert torch.equal(rates[n], old[n])
    assert (old["body.0.0.weight"] == 0).any() and (old["body.0.0.weight"] > 0).any()
    # The Learner adapts such a head: it leaves zero, while frozen body entries stay put.
    task = SimpleNamespace(loss_fn=F.cross_entropy, classification=True, input_shape=(1, 12, 12), output_dim=5)
    learner = Learner(None, task, new, new_algo.adapted, 0.3, 0.0, 2, state["model"], zeroed, adapt_rule=new_algo.adapt_rule)
    x = torch.randn(10, 1, 12, 12)
    learner.adapt(x, list(range(5)) * 2)
    assert learner.fast["head.weight"].abs().sum() > 0
    body = "body.0.0.weight"
    frozen = rates[body] == 0
    assert torch.equal(learner.fast[body][frozen], new.state_dict()[body][frozen])


# ------------------------------------------------------------------ bad input

def test_config_lists_every_rule_of_the_inner_loop():
    assert RULES["algo.adapt_rule"][1] == "one of " + ", ".join(ADAPT_RULES)
    assert {MetaSGD.name, GradientMask.name, ThresholdMask.name, "fixed"} == set(ADAPT_RULES)


def test_learned_rule_without_inner_steps_is_refused():
    for name in LEARNED:
        with pytest.raises(ConfigError, match="algo.adapt_rule"):
            validate(make_cfg(f"algo.adapt_rule={name}", "algo.inner_steps=0"))
    validate(make_cfg("algo.adapt_rule=fixed", "algo.inner_steps=0"))
    validate(make_cfg("algo.adapt_rule=sparse", "algo.first_order=true"))  # first order trains the masks (see above)


def test_unknown_rule_from_python_is_a_config_error():
    with pytest.raises(ConfigError, match="algo.adapt_rule='magic' is not allowed: one of fixed, meta_sgd, sparse, threshold"):
        make_adapt_rule("magic", linear_model(), ["head.weight"], 0.1)


def test_rule_lr_and_rule_init_ranges():
    for override, expected in (("algo.rule_lr=0", "algo.rule_lr=0 is not allowed: must be a number > 0"),
                               ("algo.rule_lr=-1e-3", "algo.rule_lr=-0.001 is not allowed"),
                               ("algo.rule_init=abc", "algo.rule_init='abc' is not allowed: must be a number"),
                               ("algo.rule_init=true", "algo.rule_init=True is not allowed: must be a number")):
        with pytest.raises(ConfigError) as e:
            validate(make_cfg("algo.adapt_rule=sparse", override))
        assert str(e.value).startswith(expected), str(e.value)
    validate(make_cfg("algo.adapt_rule=sparse", "algo.rule_lr=0.01", "algo.rule_init=-0.5"))


@pytest.mark.parametrize("override,expected", [
    (["algo.adapt_rule=magic"], "algo.adapt_rule='magic' is not allowed: must be one of fixed, meta_sgd, sparse, threshold"),
    (["algo.adapt_rule=sparse", "algo.inner_steps=0"], "algo.adapt_rule='sparse' is not allowed: fixed when algo.inner_steps=0"),
])
def test_cli_bad_rule_input_is_one_line_and_exit_2(tmp_path, override, expected):
    result = run_metarun(*override, "iterations=2", "eval_tasks=2", "progress=false", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("metarun: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------ metarun-report

def test_report_plots_the_learned_per_layer_shares_and_rates(tmp_path):
    from PIL import Image

    from metarun import report

    sweep = tmp_path / "sweep"
    result = run_metarun("-m", "task=linear_regression", "model=linear", "algo.adapt_rule=sparse,meta_sgd", "seed=0,1",
                         "algo.rule_init=0.001", "algo.rule_lr=0.01", "iterations=4", "log_every=1", "eval_every=4",
                         "eval_tasks=4", "eval_steps=1", "meta_batch_size=4", "progress=false", f"hydra.sweep.dir={sweep}",
                         cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    out = report.report(sweep, out=tmp_path / "report", smooth=1)
    names = {p.name for p in out["figures"]}
    assert {"adapted_share.png", "learned_lr.png"} <= names
    assert Image.open(tmp_path / "report" / "adapted_share.png").size[0] > 100
    # The curves are the seed means of what the runs logged.
    assert sorted(out["groups"]) == ["algo.adapt_rule=meta_sgd", "algo.adapt_rule=sparse"]
    group = out["groups"]["algo.adapt_rule=sparse"]
    logged = [[json.loads(line) for line in (r["dir"] / "metrics.jsonl").read_text().splitlines()] for r in group]
    curve = report.seed_average(group, "train/density/body.1.weight")
    for it in (1, 4):
        values = [next(x["train/density/body.1.weight"] for x in rows if x["iteration"] == it) for rows in logged]
        assert curve.loc[it, "mean"] == pytest.approx(sum(values) / 2)
    # Runs that did not log a figure's columns draw no figure (masks log no rates).
    assert report.plot_adapt_rule({"sparse": group}, "train/lr/", tmp_path / "x.png", "") is None


@pytest.mark.parametrize("preset", ["learned_subsets_linreg", "learned_subsets_omniglot"])
def test_presets_compose_and_every_swept_arm_is_valid(preset):
    from metarun.cli import precheck

    precheck(["-m", f"+experiment={preset}", "scale=full"])  # composes and validates every sweep value
    arms = make_cfg(f"+experiment={preset}").arms
    for arm in arms:
        cfg = make_cfg(f"+experiment={preset}", f"arm={arm}")
        assert cfg.algo.adapt_rule == arms[arm].adapt_rule and list(cfg.algo.adapt) == list(arms[arm].adapt)
        validate(cfg)
    if preset.endswith("omniglot"):
        cfg = make_cfg(f"+experiment={preset}", "episode=20w1s")
        assert (cfg.task.ways, cfg.meta_batch_size) == (20, 16)
