"""``python -m gpuwpo``: the same command line as the ``gpuwpo`` console script."""

from .cli import run

run()
