"""Data-parallel training of ResNet on Stanford Online Products with ChainerMN.

Importing this package first applies the shims in ``distributed.compat``.
"""
from distributed import compat

compat.apply()
