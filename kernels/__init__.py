"""Triton kernels of gpuwpo, installed as ``gpuwpo.kernels``.

Every kernel here has a pure-torch twin in the library that is its specification.
"""
