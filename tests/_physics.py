"""The small physics several test modules share: two inference times, the default PCM model at
25 uS and the baseline DualPair f=[1, 1] over 0..25 uS."""

from __future__ import annotations

from gpuwpo import DualPairConductanceConverter, PCMLikeNoiseModel

TIMES = [1.0, 86400.0]
NOISE = PCMLikeNoiseModel(g_max=25.0)
DUAL = DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
