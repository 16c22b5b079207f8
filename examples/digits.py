"""The digits example as a script: ``python examples/digits.py [--quick] [--out DIR]``.

Trains a small CNN on scikit-learn's digits, optimises the programming of its layers for
simulated PCM hardware and prints test accuracy over a year, baseline against optimised.
The work is in :mod:`gpuwpo.example`; this is the same as ``gpuwpo example``.
"""

import sys

from gpuwpo.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["example", *sys.argv[1:]]))
