"""Meta-learning algorithms. MAML, first-order MAML and ANIL are `maml.MAML` with different
settings (`first_order`, `adapt`); Reptile is `reptile.Reptile`. Each has:

- `step(batch)`: one meta-update from a meta-batch; returns metrics of that batch.
- `oracle_calls(meta_batch_size)`: oracle calls one step makes (Ji et al., 2020).
- `model`, `adapted`, `inner_lr`, `inner_l2`: what evaluation and prediction need.
"""
