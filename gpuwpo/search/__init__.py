"""The search of a batch of layers' programming strategies: the strategy space, the test tiles,
the batched objective (and its per-candidate reference), differential evolution and the other
backends, the search options, the never-worse choice, checkpoints, and
:class:`gpuwpo.WeightProgrammingOptimizer`, which runs them for one or several layers.

Built on :mod:`gpuwpo.device`; knows nothing of networks (:mod:`gpuwpo.network`).
"""
