"""The in-place CPU communicator: the mean over ranks, with and without a pre-divided loss."""
import chainer
import chainer.functions as F
import chainermn
import numpy
import pytest

from distributed.comm import INPLACE, InPlaceMeanGrad, create_communicator, loss_function


class _Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.a = chainer.links.Linear(3, 4)
            self.b = chainer.links.Linear(4, 2)

    def forward(self, x, t):
        loss = F.softmax_cross_entropy(self.b(F.relu(self.a(x))), t)
        chainer.report({'loss': loss}, self)
        return loss


@pytest.mark.mpi
@pytest.mark.parametrize('packed', [None, False, True])
def test_inplace_allreduce_is_the_mean_over_ranks(world, packed):
    # None: the communicator's own choice (per array on one host; packed across hosts).
    comm = (create_communicator(INPLACE) if packed is None
            else InPlaceMeanGrad(chainermn.create_communicator('naive'), packed=packed))
    assert comm.packed is (packed or False)
    net = _Net()
    params = [p for _, p in sorted(net.namedparams())]
    for i, param in enumerate(params):
        param.grad = numpy.full(param.shape, (comm.rank + 1) * (i + 1), numpy.float32)
    net.b.b.grad = None  # a parameter without a gradient is left alone, as ChainerMN does
    comm.multi_node_mean_grad(net)
    expected_factor = (comm.size + 1) / 2.0  # mean of 1..size
    for i, param in enumerate(params):
        if param is net.b.b:
            assert param.grad is None
        else:
            numpy.testing.assert_allclose(param.grad, expected_factor * (i + 1))
    net.cleargrads()
    for param in params:
        param.grad = numpy.full(param.shape, comm.rank + 1.0, numpy.float32)
    comm.multi_node_mean_grad(net, zero_fill=True)
    for param in params:
        numpy.testing.assert_allclose(param.grad, expected_factor)
    assert comm.size == world.size


def _grads(net):
    return {name: param.grad.copy() for name, param in net.namedparams()}


@pytest.mark.mpi
def test_predivided_loss_gives_the_same_mean_and_reports_the_loss_itself(world):
    comm = create_communicator(INPLACE)
    rng = numpy.random.RandomState(comm.rank)
    x = rng.randn(5, 3).astype(numpy.float32)
    t = rng.randint(0, 2, 5).astype(numpy.int32)
    net = _Net()
    reference = net.copy(mode='copy')

    reference.cleargrads()
    reference(x, t).backward()
    comm.multi_node_mean_grad(reference)

    reporter = chainer.Reporter()
    reporter.add_observer('main', net)
    lossfun = loss_function(comm, net)
    observation = {}
    with reporter.scope(observation):
        net.cleargrads()
        loss = lossfun(x, t)
    loss.backward()
    assert comm.grads_predivided == (comm.size > 1)
    comm.multi_node_mean_grad(net)
    assert not comm.grads_predivided  # consumed by the reduction it was set for

    for name, grad in _grads(reference).items():
        numpy.testing.assert_allclose(_grads(net)[name], grad, rtol=1e-6, atol=1e-8)
    # The log shows the loss, not the loss divided by the ranks.
    numpy.testing.assert_allclose(float(observation['main/loss'].array),
                                  float(loss.array) * comm.size, rtol=1e-6)
    assert comm.size == world.size


@pytest.mark.mpi
def test_at_one_rank_the_loss_is_not_divided(world):
    from mpi4py import MPI
    # A one-rank communicator whatever the world's size: MPI.COMM_SELF.
    comm = InPlaceMeanGrad(chainermn.create_communicator('naive', mpi_comm=MPI.COMM_SELF))
    assert comm.size == 1
    net = _Net()
    assert loss_function(comm, net) is net


def test_loss_function_of_a_chainermn_communicator_is_the_model():
    net = _Net()
    assert loss_function(chainermn.create_communicator('naive'), net) is net


def test_float16_allreduce_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match='pure_nccl'):
        create_communicator(INPLACE, allreduce_grad_dtype='float16')


@pytest.mark.mpi
def test_a_broadcast_step_clears_the_mark_of_its_gradients(world):
    comm = create_communicator(INPLACE)
    net = _Net()
    net(numpy.ones((2, 3), numpy.float32), numpy.zeros(2, numpy.int32))
    comm.grads_predivided = True  # as after a pre-divided loss's backward
    comm.bcast_data(net)  # as chainermn's first update does, instead of a reduction
    assert not comm.grads_predivided
    assert comm.size == world.size
