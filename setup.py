# Metadata lives in setup.cfg; this file lets `pip install -e .` work without build isolation.
from setuptools import setup

setup()
