"""Shared fixtures: a small SOP-format tree and the MPI world. The tests' helper modules
live in tests/helpers/, importable by name from every test (setup.cfg's pythonpath)."""
import os
import subprocess
import sys
import tempfile

import pytest

import distributed  # noqa: F401  (compat shims before chainer)


def pytest_configure(config):
    """Under mpiexec every rank gets a temporary folder of its own: two pytest processes
    tidying one folder race (pytest warns, and could remove a folder still in use)."""
    rank = os.environ.get('PMI_RANK', os.environ.get('OMPI_COMM_WORLD_RANK'))
    if rank is not None and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix='pytest-rank{}-'.format(rank))


@pytest.fixture(scope='session')
def small_sop(tmp_path_factory):
    """A minisop tree with few products: the real SOP layout, quick to train on."""
    from distributed.data.minisop import make_minisop
    return make_minisop(str(tmp_path_factory.mktemp('sop') / 'Stanford_Online_Products'),
                        products_per_class=2)


@pytest.fixture(scope='session')
def tiny_sop(tmp_path_factory):
    """A tiny SOP tree: 12 super-classes x 2 products x 2 images of 40-60 px, 12 train
    images per rank at 2 ranks, made by the real command."""
    from launching import REPO
    root = tmp_path_factory.mktemp('tiny') / 'sop'
    subprocess.run([sys.executable, '-m', 'launch.make_minisop', '--products-per-class', '2',
                    '--images-per-product', '2', '2', '--size-range', '40', '60', str(root)],
                   cwd=REPO, check=True, capture_output=True)
    return root


@pytest.fixture
def one_rank_runtime():
    """A CPU ``Runtime`` of one rank (``MPI.COMM_SELF``) whatever the world's size, built
    without ``create_runtime``, which would install its abort hooks in pytest."""
    import chainer
    import chainermn
    from mpi4py import MPI
    from distributed.runtime import Runtime
    return Runtime(comm=chainermn.create_communicator('naive', MPI.COMM_SELF),
                   device=chainer.get_device('@numpy'))


@pytest.fixture(scope='session')
def world():
    from mpi4py import MPI
    return MPI.COMM_WORLD
