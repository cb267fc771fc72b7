"""Shared fixtures: a small SOP-format tree and the MPI world."""
import pytest

import distributed  # noqa: F401  (compat shims before chainer)


@pytest.fixture(scope='session')
def small_sop(tmp_path_factory):
    """A minisop tree with few products: the real SOP layout, quick to train on."""
    from distributed.data.minisop import make_minisop
    return make_minisop(str(tmp_path_factory.mktemp('sop') / 'Stanford_Online_Products'),
                        products_per_class=2)


@pytest.fixture(scope='session')
def world():
    from mpi4py import MPI
    return MPI.COMM_WORLD
