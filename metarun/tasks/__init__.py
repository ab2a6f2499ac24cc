"""Task families. Each samples meta-batches of tasks as stacked tensors.

A task family has `input_shape`, `output_dim`, `classification`, `loss_fn(outputs, targets)` and
`sample(n, generator, split)` returning ``(support_x, support_y, query_x, query_y)``, each with a
leading task dimension of size `n`. Splits are "train", "val" and "test".
"""
