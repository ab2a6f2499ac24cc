"""The one functional inner loop that every algorithm reuses.

Everything here is a pure function of a parameter dict, in the style of torch.func's MAML
example: `adapt` takes gradient steps on an inner loss, and `task_functions` builds the
per-task forward functions. Algorithms write one per-task function and `vmap` it over the
tasks of a meta-batch; no module is cloned and no Python loop runs over tasks.
"""
from fnmatch import fnmatchcase

import torch
from torch.func import functional_call, grad

from metarun.config import ConfigError


def adapted_names(model, patterns):
    """Names of the parameters matched by the glob `patterns` (``algo.adapt``), in model order."""
    names = [n for n, _ in model.named_parameters()]
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError("algo.adapt", pattern, "glob patterns over the model's parameters: " + ", ".join(names))
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def adapt(inner_loss, fast, steps, lr, l2=0.0, first_order=False):
    """Take `steps` gradient steps of `inner_loss` on the parameter dict `fast`.

    The inner objective is ``inner_loss(fast) + l2 * ||fast||^2``. Second order (the default)
    keeps the graph of every step so the outer gradient flows through the adaptation;
    `first_order` detaches the inner gradients, which drops exactly the Hessian terms.
    """

    def objective(params):
        loss = inner_loss(params)
        if l2:
            loss = loss + l2 * sum(p.pow(2).sum() for p in params.values())
        return loss

    for _ in range(steps):
        grads = grad(objective)(fast)
        # torch.add(p, g, alpha=-lr) is p - lr * g in one op: under vmap and grad every op costs
        # dispatch overhead, which dominates small models such as the sinusoid MLP.
        fast = {k: torch.add(p, grads[k].detach() if first_order else grads[k], alpha=-lr) for k, p in fast.items()}
    return fast


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


def accuracy(outputs, targets):
    return (outputs.argmax(-1) == targets).float().mean()


def adapt_and_evaluate(model, params, adapted, loss_fn, support, query, steps, lr, l2=0.0, classification=False):
    """Per-task query ``{"loss": ..., "accuracy": ...}`` after 0, 1, ..., `steps` inner steps. For vmap.

    Each step is one more call of `adapt`, so evaluation runs exactly the training inner loop.
    """
    prepare, predict = task_functions(model, params, adapted)
    hs, hq = prepare(support[0]), prepare(query[0])
    fast = {k: params[k] for k in adapted}
    results = {"loss": [], "accuracy": []}
    for step in range(steps + 1):
        if step:
            fast = adapt(lambda p: loss_fn(predict(p, hs), support[1]), fast, 1, lr, l2, first_order=True)
        out = predict(fast, hq)
        results["loss"].append(loss_fn(out, query[1]))
        if classification:
            results["accuracy"].append(accuracy(out, query[1]))
    return {k: torch.stack(v) for k, v in results.items() if v}
