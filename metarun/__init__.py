"""metarun: config-driven gradient-based meta-learning in PyTorch."""
