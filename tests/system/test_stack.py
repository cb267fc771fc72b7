"""The stack itself: chainer + chainercv + chainermn + MPI on this Python and NumPy."""
import chainer
import chainermn
import numpy
import pytest

from distributed.model import create_model


def test_resnet50_fb_forward_backward_update_on_cpu():
    model = create_model('resnet50', n_class=12)
    bottlenecks = [link for link in model.links()
                   if type(link).__name__ == 'Bottleneck']
    assert len(bottlenecks) == 16
    assert all((b.conv3.bn.gamma.array == 0).all() for b in bottlenecks)
    # Every layer is sized on creation (chainercv sizes some at the first forward pass).
    assert all(param.array is not None for param in model.params())
    optimizer = chainer.optimizers.MomentumSGD(lr=0.1)
    optimizer.setup(model)
    x = numpy.random.RandomState(0).uniform(-100, 100, (2, 3, 32, 32)).astype(numpy.float32)
    t = numpy.array([3, 7], dtype=numpy.int32)
    with chainer.using_config('train', True):
        loss = model(x, t)
    before = model.predictor.fc6.W.array.copy()
    model.cleargrads()
    loss.backward()
    assert loss.dtype == numpy.float32 and numpy.isfinite(loss.array)
    assert model.predictor.conv1.conv.W.grad is not None
    optimizer.update()
    assert not numpy.array_equal(before, model.predictor.fc6.W.array)
    assert model.predictor.fc6.W.array.dtype == numpy.float32


@pytest.mark.mpi
def test_naive_communicator_allreduce(world):
    comm = chainermn.create_communicator('naive')
    assert (comm.rank, comm.size) == (world.rank, world.size)
    total = comm.allreduce(numpy.full(3, comm.rank + 1, dtype=numpy.float32))
    expected = sum(range(1, comm.size + 1))
    numpy.testing.assert_array_equal(total, numpy.full(3, expected, dtype=numpy.float32))


@pytest.mark.mpi
def test_scatter_dataset_gives_disjoint_covering_shards(world):
    comm = chainermn.create_communicator('naive')
    data = list(range(10)) if comm.rank == 0 else None
    shard = chainermn.scatter_dataset(data, comm, shuffle=True, seed=0,
                                      force_equal_length=False)
    shards = comm.gather_obj(list(shard))
    if comm.rank == 0:
        flat = sum(shards, [])
        assert sorted(flat) == list(range(10))
        assert len(shards) == comm.size
