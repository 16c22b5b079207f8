"""``python -m gpuwpo.cli``: the same command line as ``gpuwpo`` and ``python -m gpuwpo``."""

from . import run

run()
