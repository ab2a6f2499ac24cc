"""metarun: config-driven gradient-based meta-learning in PyTorch."""


def __getattr__(name):  # `metarun.load_learner` without importing torch for every `metarun` command
    if name in ("load_learner", "Learner"):
        from metarun import learner

        return getattr(learner, name)
    raise AttributeError(f"module 'metarun' has no attribute {name!r}")
