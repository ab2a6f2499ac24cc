# Makes conf/ importable as `metarun.conf` (see pyproject.toml), so Hydra finds it in any install.
