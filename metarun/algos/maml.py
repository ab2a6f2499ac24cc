"""MAML (Finn et al., 2017), first-order MAML and ANIL (Raghu et al., 2020).

    for each meta-iteration:
        sample a meta-batch of tasks T_i, each with support and query sets
        for each T_i (vmapped):  phi_i = theta - alpha * grad L_support(theta)  [N steps, adapted subset]
        theta <- outer_optimizer(theta, grad_theta  mean_i L_query(phi_i))

ANIL adapts only `head.*`; the body then runs once per task. `first_order=true` detaches the
inner gradients (FOMAML). `adapt_rule` sets the per-parameter inner learning rates: `fixed`
(algo.inner_lr everywhere) or a rule the outer loop learns with theta (metarun.inner_loop):
`meta_sgd` (alpha per entry), `sparse` (inner_lr * 1[mu > 0]) or `threshold`
(inner_lr * 1[|theta| > sigmoid(s)]); `algo.adapt` then names the candidates the rule may adapt.
`head_init=prototypes` starts each task's linear head from its support set's class prototypes
(Proto-MAML, Triantafillou et al., 2020) instead of the meta-learned head.
"""
import torch
from torch.func import vmap

from metarun.config import DataError
from metarun.inner_loop import accuracy, adapt, adapted_names, check_head_init, make_adapt_rule, start_fast, task_functions


class MAML:
    def __init__(self, model, optimizer, task, adapt, inner_steps, inner_lr, inner_l2=0.0, first_order=False, vmap_chunk=None,
                 compile=False, adapt_rule="fixed", rule_lr=None, rule_init=None, head_init="learned"):
        self.model, self.optimizer, self.task, self.vmap_chunk = model, optimizer, task, vmap_chunk
        self.adapted = adapted_names(model, adapt)
        check_head_init(head_init, model, self.adapted, task.classification)
        self.head_init = head_init
        self.inner_steps, self.inner_lr, self.inner_l2, self.first_order = inner_steps, inner_lr, inner_l2, first_order
        self.adapt_rule = make_adapt_rule(adapt_rule, model, self.adapted, inner_lr, first_order, rule_init)
        rule_params = list(self.adapt_rule.parameters())
        if rule_params:
            # Learned rates or masks: meta-trained by the same outer optimizer, in their own group
            # (Sparse-MAML trains its mask with its own learning rate), never weight-decayed.
            group = {"params": rule_params, **({"lr": rule_lr} if rule_lr is not None else {})}
            if "weight_decay" in optimizer.defaults:
                group["weight_decay"] = 0.0
            optimizer.add_param_group(group)
        # Running sum of ||meta-gradient||^2 over all meta-iterations: its mean is the stationarity
        # measure Ji et al. bound for a nonconvex inner loss, (1/K) sum_k E||grad L(theta_k)||^2.
        self.grad_sq_sum, self.grad_steps = torch.zeros((), dtype=torch.float64), 0
        if compile:
            # torch.compile removes most per-op overhead of vmap(grad) on small models; it pays
            # for itself only in long runs (about a minute of compilation on 2 CPU cores).
            self.meta_loss = torch.compile(self.meta_loss)

    def task_loss(self, params, inner_lr, support_x, support_y, query_x, query_y):
        """Post-adaptation query loss of one task, plus pre-adaptation loss and accuracy for logging."""
        prepare, predict = task_functions(self.model, params, self.adapted)
        hs, hq = prepare(support_x), prepare(query_x)
        fast = start_fast(self.model, params, self.adapted, self.head_init, support_x, hs, support_y)
        loss_fn = self.task.loss_fn
        pre_loss = loss_fn(predict(fast, hs), support_y).detach()
        fast = adapt(lambda p: loss_fn(predict(p, hs), support_y), fast, self.inner_steps, inner_lr, self.inner_l2, self.first_order)
        out = predict(fast, hq)
        metrics = {"loss": loss_fn(out, query_y), "support_loss": pre_loss}
        if self.task.classification:
            metrics["accuracy"] = accuracy(out, query_y).detach()
        return metrics

    def meta_loss(self, batch):
        params = dict(self.model.named_parameters())
        inner_lr = self.adapt_rule.learning_rates(params, self.inner_lr)
        per_task = vmap(self.task_loss, in_dims=(None, None, 0, 0, 0, 0), randomness="same",
                        chunk_size=self.vmap_chunk)(params, inner_lr, *batch)
        return {k: v.mean() for k, v in per_task.items()}

    def step(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.meta_loss(batch)
        metrics["loss"].backward()
        # The meta-gradient is already here: its norm costs one reduction, and no extra device sync.
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        metrics["grad_norm"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.grad_sq_sum = self.grad_sq_sum.to(grads[0].device) + metrics["grad_norm"].double() ** 2
        self.grad_steps += 1
        metrics["grad_sq_mean"] = self.grad_sq_sum / self.grad_steps
        self.optimizer.step()
        # What a learned rule has learned (per-layer adapted share, mean rates), logged with the loss.
        metrics.update(self.adapt_rule.density(dict(self.model.named_parameters())))
        names = list(metrics)
        values = torch.stack([metrics[k].detach().to(metrics["loss"].dtype) for k in names]).tolist()  # one device sync per step
        return dict(zip(names, values))

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "adapt_rule": self.adapt_rule.state_dict(),
                "grad_sq_sum": self.grad_sq_sum, "grad_steps": self.grad_steps}

    def load_state_dict(self, state):
        saved, own = state["adapt_rule"].keys(), self.adapt_rule.state_dict().keys()
        if saved != own:  # e.g. mode=eval algo.adapt_rule=sparse on a run trained with another rule
            raise DataError(f"the checkpoint was trained with another algo.adapt_rule (its rule holds {len(saved)} tensors, "
                            f"algo.adapt_rule={self.adapt_rule.name} {len(own)}): use the rule the run was trained with")
        self.optimizer.load_state_dict(state["optimizer"])
        self.adapt_rule.load_state_dict(state["adapt_rule"])
        self.grad_sq_sum = state.get("grad_sq_sum", torch.zeros((), dtype=torch.float64))  # absent before grad_norm was logged
        self.grad_steps = state.get("grad_steps", 0)

    def oracle_calls(self, meta_batch_size):
        # Per task (Ji et al., 2020): N inner gradients, one outer gradient and, when second
        # order, one Hessian-vector product per inner step on the way back. When some
        # parameters do not adapt (ANIL), each of those steps also needs a mixed Jacobian-vector
        # product d^2 L_S / d(frozen) d(adapted) . v, counted as `jacobian_vector`.
        # `*_params` weight each call by the number of parameters it differentiates, the
        # measure in which ANIL (head only) is cheaper than MAML. Autograd computes the N mixed
        # products with one backward pass through the frozen part per task, so that is what
        # `jacobian_vector_params` charges.
        n = self.inner_steps * meta_batch_size
        dim = sum(p.numel() for name, p in self.model.named_parameters() if name in self.adapted)
        total = sum(p.numel() for p in self.model.parameters())
        rule = sum(p.numel() for p in self.adapt_rule.parameters())  # the outer gradient also reaches a learned rule
        second = 0 if self.first_order else n
        mixed = second if total > dim else 0
        return {
            "inner_grad": n,
            "outer_grad": meta_batch_size,
            "second_order": second,
            "jacobian_vector": mixed,
            "inner_grad_params": n * dim,
            "second_order_params": second * dim,
            "jacobian_vector_params": meta_batch_size * (total - dim) if mixed else 0,
            "outer_grad_params": meta_batch_size * (total + rule),
        }
