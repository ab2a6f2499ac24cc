"""The one functional inner loop that every algorithm reuses.

Everything here is a pure function of a parameter dict, in the style of torch.func's MAML
example: `adapt` takes gradient steps on an inner loss, and `task_functions` builds the
per-task forward functions. Algorithms write one per-task function and `vmap` it over the
tasks of a meta-batch; no module is cloned and no Python loop runs over tasks.
"""
from fnmatch import fnmatchcase

import torch
from torch.func import functional_call, grad

from metarun.config import ConfigError, DataError
from metarun.nn.masks import binary_step, threshold_mask


def adapted_names(model, patterns):
    """Names of the parameters matched by the glob `patterns` (``algo.adapt``), in model order."""
    names = [n for n, _ in model.named_parameters()]
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError("algo.adapt", pattern, "glob patterns over the model's parameters: " + ", ".join(names))
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def adapt(inner_loss, fast, steps, lr, l2=0.0, first_order=False, *, rule=None, max_grad_norm=None, functional=True):
    """Take `steps` gradient steps of `inner_loss` on the parameter dict `fast`; return the adapted dict.

    The inner objective is ``inner_loss(fast) + l2 * ||fast||^2``. `lr` is a float or a dict of
    per-parameter rates broadcastable to each tensor (Meta-SGD's learned rates, or `inner_lr * mask`
    for gradient masks); it may carry a graph, so the outer loop can learn it. `rule` is the step
    rule: None for SGD (theta - lr * g), or `Adam(...)` for a differentiable Adam step from an
    optimizer state (LIRPG's lookahead). `max_grad_norm` clips the gradient's global norm first,
    as `torch.nn.utils.clip_grad_norm_` does, but differentiably.

    Second order (the default) keeps the graph of every step so the outer gradient flows through
    the adaptation; `first_order` detaches the inner gradients, which drops exactly the Hessian terms.
    `functional=False` takes the inner gradients with torch.autograd.grad(create_graph=True) instead
    of torch.func.grad: the same derivatives with less per-op overhead, for callers that do not vmap
    the adaptation (LIRPG's single lookahead); the outer gradient must then be taken with
    torch.autograd.grad with respect to the outer parameters only.
    """

    def objective(params):
        loss = inner_loss(params)
        if l2:
            loss = loss + l2 * sum(p.pow(2).sum() for p in params.values())
        return loss

    def autograd_grad(params):
        with torch.enable_grad():
            leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
            values = torch.autograd.grad(objective(leaves), list(leaves.values()), create_graph=not first_order)
        return dict(zip(leaves, values))

    state = rule.init(fast) if rule is not None else None
    for _ in range(steps):
        grads = grad(objective)(fast) if functional else autograd_grad(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if max_grad_norm is not None:
            grads = clip_by_global_norm(grads, max_grad_norm)
        if rule is None:
            fast = sgd_step(fast, grads, lr)
        else:
            fast, state = rule.step(fast, grads, state, lr)
    return fast


def sgd_step(fast, grads, lr):
    if isinstance(lr, dict):
        return {k: p - lr[k] * grads[k] if k in lr else p for k, p in fast.items()}
    # torch.add(p, g, alpha=-lr) is p - lr * g in one op: under vmap and grad every op costs
    # dispatch overhead, which dominates small models such as the sinusoid MLP.
    return {k: torch.add(p, grads[k], alpha=-lr) for k, p in fast.items()}


def clip_by_global_norm(grads, max_norm):
    """`torch.nn.utils.clip_grad_norm_`'s rule as a pure function: scale by min(1, max_norm / (norm + 1e-6))."""
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return {k: g * scale for k, g in grads.items()}


class Adam:
    """A differentiable Adam step (torch.optim.Adam's update, no weight decay or amsgrad).

    `state` is the optimizer's per-parameter state before this step, `{name: {"exp_avg",
    "exp_avg_sq", "step"}}` as `torch.optim.Adam.state` holds it (None or a missing name: zeros),
    so one step from it equals the real optimizer's next step. Later steps continue from the
    updated moments. `detach_second_moment` feeds the second moment a detached gradient, so
    derivatives flow through the first moment only (LIRPG's reference code: tf.stop_gradient there).
    """

    def __init__(self, betas=(0.9, 0.999), eps=1e-8, state=None, detach_second_moment=False):
        self.betas, self.eps, self.state = betas, eps, state or {}
        self.detach_second_moment = detach_second_moment

    def init(self, fast):
        def start(k, p):
            s = self.state.get(k)
            if s is None:
                return (torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), dtype=p.dtype, device=p.device))
            return (s["exp_avg"], s["exp_avg_sq"], torch.as_tensor(s["step"], dtype=p.dtype, device=p.device))
        return {k: start(k, p) for k, p in fast.items()}

    def step(self, fast, grads, state, lr):
        beta1, beta2 = self.betas
        new_fast, new_state = {}, {}
        for k, p in fast.items():
            m, v, t = state[k]
            g = grads[k]
            t = t + 1
            m = beta1 * m + (1 - beta1) * g
            gv = g.detach() if self.detach_second_moment else g
            v = beta2 * v + (1 - beta2) * gv * gv
            rate = lr[k] if isinstance(lr, dict) else lr
            denom = v.sqrt() / torch.sqrt(1 - beta2 ** t) + self.eps
            new_fast[k] = p - rate / (1 - beta1 ** t) * m / denom
            new_state[k] = (m, v, t)
        return new_fast, new_state


class FixedRule(torch.nn.Module):
    """`algo.adapt_rule=fixed`: every adapted parameter steps with the scalar `algo.inner_lr`.

    Adapt rules decide the per-parameter inner learning rates (`learning_rates(params, lr)`, a
    float or a dict for `adapt`); learned rules (Meta-SGD, gradient masks) hold their tensors as
    parameters of the module, trained by the outer optimizer and saved with the algorithm.
    """

    name = "fixed"

    def learning_rates(self, params, lr):
        return lr

    def density(self, params):
        """What the rule has learned, per adapted tensor, as {metric name: 0-dim tensor} (nothing here)."""
        return {}


class LearnedRule(torch.nn.Module):
    """One learned tensor per adapted parameter, entry by entry: the common part of the learned rules.

    `rate(name, param, value, lr)` turns the learned tensor `value` of the parameter `param` into
    its inner learning rates. Rates are computed once per meta-batch from the meta-parameters,
    outside the per-task vmap, and stay differentiable, so the outer loss trains the rule.
    `plain` names step at the plain `lr` instead: an output layer zero-initialised for another
    number of ways (metarun.learner), whose learned tensor was fitted to the trained head's shape.
    """

    def __init__(self, model, adapted, init):
        super().__init__()
        params = dict(model.named_parameters())
        self.names = list(adapted)
        # ParameterDict keys cannot contain "."; "/" keeps the checkpoint keys readable.
        self.values = torch.nn.ParameterDict(
            {n.replace(".", "/"): torch.nn.Parameter(torch.full_like(params[n].detach(), float(init))) for n in self.names})
        self.plain = frozenset()

    def value(self, name):
        return self.values[name.replace(".", "/")]

    def learning_rates(self, params, lr):
        return {n: lr if n in self.plain else self.rate(n, params[n], self.value(n), lr) for n in self.names}

    def load_trained(self, state, plain=()):
        """Load a checkpoint's rule tensors in their trained shapes, for evaluation and prediction
        with another head (`plain`: its zero-initialised tensors). Not for resuming: the outer
        optimizer keeps the replaced tensors."""
        own = self.state_dict()
        if state.keys() != own.keys():
            raise DataError(f"the checkpoint's adapt rule covers {sorted(state)}, this run's {sorted(own)}")
        for key, value in state.items():
            self.values[key.split(".", 1)[1]] = torch.nn.Parameter(value.to(own[key].device, own[key].dtype))
        self.plain = frozenset(plain)


class MetaSGD(LearnedRule):
    """`meta_sgd` (Li, Zhou, Chen and Li, 2017): theta' = theta - alpha * grad, alpha learned entry by entry.

    alpha starts at `algo.inner_lr` everywhere (learn2learn's MetaSGD does the same), so training
    starts from MAML; it is unconstrained, as in the paper (an entry may learn a negative rate).
    `algo.inner_lr` then only sets that start (and the rate of `plain` tensors).
    """

    name = "meta_sgd"

    def rate(self, name, param, alpha, lr):
        return alpha

    def density(self, params):
        alphas = {n: self.value(n).detach() for n in self.names}
        return {**{f"lr/{n}": a.mean() for n, a in alphas.items()}, **{f"lr_abs/{n}": a.abs().mean() for n, a in alphas.items()}}


class GradientMask(LearnedRule):
    """`sparse`, Sparse-MAML (von Oswald et al., 2021): theta' = theta - inner_lr * 1[mu > 0] * grad.

    mu is trained through the plain straight-through estimator (the step's backward is the
    identity), as in the paper. mu starts at +`algo.rule_init` (default 0.1) everywhere: every mask
    is open, so training starts from MAML (the paper's code starts from a random half-open mask);
    with the rule's Adam step `algo.rule_lr` an entry can close after about rule_init / rule_lr
    meta-iterations of consistent gradient sign.
    """

    name = "sparse"

    def rate(self, name, param, mu, lr):
        return lr * binary_step(mu, backward="identity")

    def density(self, params):
        masks = {n: (self.value(n).detach() > 0) for n in self.names}
        return _shares(masks)


class ThresholdMask(LearnedRule):
    """`threshold`, Kaleidoscope-style: theta' = theta - inner_lr * 1[|theta| - sigmoid(s) > 0] * grad.

    An entry adapts while its meta-learned magnitude exceeds its learned threshold sigmoid(s);
    s is trained through Kaleidoscope's bounded estimator (backward tanh of the gradient;
    metarun.nn.masks.threshold_mask; |theta| is detached there, so theta's own meta-gradient is
    MAML's). s starts at `algo.rule_init` (default -10: sigmoid = 4.5e-5) everywhere: every mask
    is open except entries with |theta| < 4.5e-5, such as zero-initialised BatchNorm shifts, which
    open once the outer loop moves them. Kaleidoscope draws s in [-10, -5], which would start conv4
    with ~15% of its weights frozen.
    """

    name = "threshold"

    def rate(self, name, param, s, lr):
        return lr * threshold_mask(param, s)

    def density(self, params):
        masks = {n: (params[n].detach().abs() > torch.sigmoid(self.value(n).detach())) for n in self.names}
        return _shares(masks)


def _shares(masks):
    """Share of each tensor's entries that adapt, and of all of them ("density")."""
    total = sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
    return {"density": total, **{f"density/{n}": m.float().mean() for n, m in masks.items()}}


ADAPT_RULES = ("fixed", "meta_sgd", "sparse", "threshold")
RULE_INIT = {"meta_sgd": None, "sparse": 0.1, "threshold": -10.0}  # None: algo.inner_lr


def make_adapt_rule(name, model, adapted, inner_lr, first_order=False, init=None):
    """The `algo.adapt_rule` module for the adapted parameters `adapted` of `model`.

    `init` is the learned tensors' starting value (None: the rule's default, `RULE_INIT`).
    `first_order` is accepted by every rule: detaching the inner gradients does not detach the
    rates, which enter each step as theta - rate * g, so the outer loss still reaches them
    (d L_query / d rate = -g * dL_query/dtheta'; with one inner step exactly the second-order
    gradient). Sparse-MAML's own experiments are first order.
    """
    if name == "fixed":
        return FixedRule()
    if name not in ADAPT_RULES:
        raise ConfigError("algo.adapt_rule", name, "one of " + ", ".join(ADAPT_RULES))
    if init is None:
        init = inner_lr if RULE_INIT[name] is None else RULE_INIT[name]
    return next(rule for rule in (MetaSGD, GradientMask, ThresholdMask) if rule.name == name)(model, adapted, init)


def _strip(prefix, d):
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def task_functions(model, params, adapted, buffers=None):
    """Return ``(prepare, predict)`` for one task.

    ``predict(fast, prepare(x))`` equals ``model(x)`` with the adapted parameters `fast` in place.
    When no body parameter adapts (ANIL), `prepare` runs the body once per task and the inner
    steps only touch the head; otherwise `prepare` is the identity.
    """
    buffers = buffers or {}
    frozen = {k: v for k, v in params.items() if k not in adapted}
    # functional_call's weight-tying bookkeeping costs time on every call; skip it when the model
    # ties no parameters (the usual case), where it changes nothing.
    tied = any(len(list(named(remove_duplicate=False))) != len(list(named())) for named in (model.named_parameters, model.named_buffers))
    if all(n.startswith("head.") for n in adapted):
        body = (_strip("body.", frozen), _strip("body.", buffers))
        head_frozen, head_buffers = _strip("head.", frozen), _strip("head.", buffers)

        def prepare(x):
            return functional_call(model.body, body, (x,), tie_weights=tied)

        def predict(fast, h):
            return functional_call(model.head, ({**head_frozen, **_strip("head.", fast)}, head_buffers), (h,), tie_weights=tied)

        return prepare, predict

    def predict(fast, x):
        return functional_call(model, ({**frozen, **fast}, buffers), (x,), tie_weights=tied)

    return (lambda x: x), predict


HEAD_INITS = ("learned", "prototypes")


def check_head_init(head_init, model, adapted, classification):
    """Raise ConfigError unless `algo.head_init` is one of HEAD_INITS and fits the model and task."""
    if head_init not in HEAD_INITS:
        raise ConfigError("algo.head_init", head_init, "one of " + ", ".join(HEAD_INITS))
    if head_init == "prototypes":
        if not classification:
            raise ConfigError("algo.head_init", head_init, "learned for regression tasks (prototypes are class means)")
        if not isinstance(getattr(model, "head", None), torch.nn.Linear) or not {"head.weight", "head.bias"} <= set(adapted):
            raise ConfigError("algo.head_init", head_init, "learned unless the model's head is one linear layer that adapts "
                              "(head.weight and head.bias matched by algo.adapt; model.head_hidden=0)")


def prototype_head(features, labels, ways):
    """Proto-MAML's head (Triantafillou et al., 2020): the linear layer whose logits are ProtoNets'.

    With c_k the mean support feature of class k, W_k = 2 c_k and b_k = -||c_k||^2 give
    W_k h + b_k = ||h||^2 - ||h - c_k||^2: per example, the softmax of minus the squared distances
    to the prototypes, a prototypical network's prediction before any inner step. It stays
    differentiable in the features, so the outer loss also trains the body through the head it
    starts from. Labels are compared with arange(ways) rather than one_hot'ed, which vmap cannot.
    """
    onehot = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(features.dtype)
    prototypes = (onehot.T @ features) / onehot.sum(0).clamp(min=1).unsqueeze(-1)
    return {"head.weight": 2 * prototypes, "head.bias": -prototypes.pow(2).sum(-1)}


def start_fast(model, params, adapted, head_init, support_x, prepared, support_y):
    """The adapted parameters a task's inner loop starts from: the meta-learned values, or with
    `head_init=prototypes` the head built from the support set's class prototypes (`prototype_head`).

    `prepared` is `prepare(support_x)` from `task_functions`: the body's features when only the
    head adapts (ANIL), else the inputs, and the body then runs once more on the support set.
    """
    fast = {k: params[k] for k in adapted}
    if head_init == "learned":
        return fast
    if all(n.startswith("head.") for n in adapted):
        features = prepared
    else:
        features = functional_call(model.body, _strip("body.", params), (support_x,))
    return {**fast, **prototype_head(features, support_y, params["head.weight"].shape[0])}


def accuracy(outputs, targets):
    return (outputs.argmax(-1) == targets).float().mean()


def adapt_and_evaluate(model, params, adapted, loss_fn, support, query, steps, lr, l2=0.0, classification=False,
                       head_init="learned"):
    """Per-task query ``{"loss": ..., "accuracy": ...}`` after 0, 1, ..., `steps` inner steps. For vmap.

    `lr` is what `adapt` takes: a float or per-parameter rates (from the algorithm's adapt rule).
    Each step is one more call of `adapt`, from the start `start_fast` gives (`head_init`), so
    evaluation runs exactly the training inner loop.
    """
    prepare, predict = task_functions(model, params, adapted)
    hs, hq = prepare(support[0]), prepare(query[0])
    fast = start_fast(model, params, adapted, head_init, support[0], hs, support[1])
    results = {"loss": [], "accuracy": []}
    for step in range(steps + 1):
        if step:
            fast = adapt(lambda p: loss_fn(predict(p, hs), support[1]), fast, 1, lr, l2, first_order=True)
        out = predict(fast, hq)
        results["loss"].append(loss_fn(out, query[1]))
        if classification:
            results["accuracy"].append(accuracy(out, query[1]))
    return {k: torch.stack(v) for k, v in results.items() if v}
