"""Models. Every model is `head(body(x))`, with submodules named `body` and `head`.

The split lets the inner loop run the body once per task when only head parameters adapt
(ANIL), and lets `algo.adapt` patterns such as ``head.*`` mean the same thing everywhere.
"""
