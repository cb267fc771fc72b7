"""Data-parallel training of ResNet on Stanford Online Products with ChainerMN.

Importing this package first loads NumPy with this rank's share of the CPU threads
(``distributed.threads``), then applies the shims in ``distributed.compat``.
"""
from distributed import threads

THREADS = threads.load_numpy()
"""The threads per rank and why, as ``describe_runtime`` prints it."""

from distributed import compat  # noqa: E402  (after NumPy has its thread count)

compat.apply()
