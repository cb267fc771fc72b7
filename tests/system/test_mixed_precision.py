"""Mixed precision (``train.dtype=mixed16``) and the float16 allreduce on the CPU.

chainer runs float16 and mixed16 on NumPy too (slowly), so the optimizer's part is tested
here on small models, and a stopped and resumed mixed16 job through the real launcher on 2
MPI ranks. What only ``pure_nccl`` does (a GPU communicator) is tested here as what the
product decides: the dtype it asks the communicator for, the groups it broadcasts in;
the communicator's behaviour itself is in tests/system/test_gpu.py (``pytest -m gpu``, which
scripts/gpu_check.sh runs on a GPU machine). A single GPU cannot show the sum across
ranks: NCCL refuses two ranks on one device.
"""
import json

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy
import pytest
from chainer.serializers import DictionarySerializer, NpzDeserializer

from distributed import comm as comm_module, runtime
from distributed.config import load_config
from distributed.optim import create_optimizer, create_schedule
from jobs import finish, train


class Small(chainer.Chain):
    """A convolution and a linear layer (float16 under mixed16) around a BatchNorm (whose
    parameters chainer keeps in float32 under mixed16)."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, 4, 3, pad=1)
            self.bn = L.BatchNormalization(4)
            self.fc = L.Linear(4, 3)

    def forward(self, x, t):
        h = F.relu(self.bn(self.conv(x)))
        h = F.sum(h, axis=(2, 3)) / (h.shape[2] * h.shape[3])
        return F.softmax_cross_entropy(self.fc(h), t)


def self_comm():
    from mpi4py import MPI
    return chainermn.create_communicator('naive', MPI.COMM_SELF)


def batches(n, dtype):
    rng = numpy.random.RandomState(1)
    return [(rng.standard_normal((4, 3, 6, 6)).astype(dtype),
             rng.randint(0, 3, 4).astype(numpy.int32)) for _ in range(n)]


def start(config, seed):
    """A ``Small`` model (weights from ``seed``) with the product's optimizer, its weights
    marked broadcast as ``checkpoint.resume.load`` does."""
    numpy.random.seed(seed)
    model = Small()
    optimizer = create_optimizer(config, model, self_comm(), create_schedule(config, 1, 10))
    optimizer.is_changed(model)
    return model, optimizer


def state(model, optimizer):
    saved = DictionarySerializer()
    model.serialize(saved['model'])
    optimizer.serialize(saved['optimizer'])
    return saved.target


def test_a_mixed16_optimizer_resumed_from_its_state_continues_exactly():
    """The float32 master weights and the loss scale are part of the saved state: chainer's
    serializers kept neither, and a resumed mixed16 run took other steps."""
    config = load_config(None, ['train.dtype=mixed16', 'optimizer.lr=0.5'])
    with chainer.using_config('dtype', chainer.mixed16):
        data = batches(6, numpy.float16)
        straight, straight_opt = start(config, 0)
        for x, t in data:
            straight_opt.update(straight, x, t)

        first, first_opt = start(config, 0)
        for x, t in data[:3]:
            first_opt.update(first, x, t)
        saved = state(first, first_opt)
        assert first.conv.W.dtype == numpy.float16
        assert first.conv.W.update_rule._fp32_param.dtype == numpy.float32

        resumed, resumed_opt = start(config, 5)  # other weights: all must come from saved
        resumed.serialize(NpzDeserializer(saved, path='model/'))
        resumed_opt.serialize(NpzDeserializer(saved, path='optimizer/'))
        for x, t in data[3:]:
            resumed_opt.update(resumed, x, t)

    assert resumed_opt._loss_scale == straight_opt._loss_scale > 1
    for (name, expected), (_, got) in zip(sorted(straight.namedparams()),
                                          sorted(resumed.namedparams())):
        numpy.testing.assert_array_equal(got.array, expected.array, err_msg=name)
        master = expected.update_rule._fp32_param
        if master is not None:
            numpy.testing.assert_array_equal(got.update_rule._fp32_param.array, master.array,
                                             err_msg=name)


def test_a_float32_optimizer_keeps_no_loss_scale():
    config = load_config(None, [])
    model, optimizer = start(config, 0)
    saved = state(model, optimizer)
    assert saved['optimizer/loss_scale'][()] is None
    assert not [key for key in saved if key.endswith('fp32_param')]


class HostReads(numpy.ndarray):
    """A NumPy array that counts the reads of its values into Python (``bool``, ``int``,
    ``float``, ``item``, ``tolist``): where a CuPy array stands, each one waits for the
    device. What NumPy functions return from it counts too."""
    reads = 0

    def _read(self):
        HostReads.reads += 1
        return self.view(numpy.ndarray)

    def __bool__(self):
        return bool(self._read())

    def __int__(self):
        return int(self._read())

    def __float__(self):
        return float(self._read())

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()

    def __array_function__(self, func, types, args, kwargs):
        result = super().__array_function__(func, types, args, kwargs)
        return result.view(HostReads) if isinstance(result, numpy.ndarray) else result


def grads_read_on_the_host(config, poison=None):
    model, optimizer = start(config, 0)
    model.cleargrads()
    x, t = batches(1, chainer.get_dtype())[0]
    model(x, t).backward()
    params = [param for _, param in sorted(model.namedparams())]
    for param in params:
        param.grad = param.grad.view(HostReads)
    if poison:
        getattr(model, poison).W.grad[0] = numpy.inf
    HostReads.reads = 0
    optimizer.check_nan_in_grads()
    return HostReads.reads, len(params), optimizer


def test_the_check_for_inf_and_nan_reads_the_host_once_per_step():
    config = load_config(None, ['train.dtype=mixed16'])
    with chainer.using_config('dtype', chainer.mixed16):
        reads, params, optimizer = grads_read_on_the_host(config)
        assert params > 2 and reads == 1, 'one read per step, not one per parameter'
        assert optimizer.is_safe_to_update()
        with pytest.warns(UserWarning, match=r'Non finite number found in param.grad of '
                          r'/fc/W \(iteration: 0, loss_scale: 1.0\)'):
            reads, _, optimizer = grads_read_on_the_host(config, poison='fc')
        assert not optimizer.is_safe_to_update()


def test_a_float16_allreduce_of_float32_training_is_guarded():
    """``comm.allreduce_dtype=float16`` with float32 training: a gradient the float16 sum
    turned into inf must skip the step (dynamic loss scaling), not reach the weights."""
    config = load_config(None, ['comm.allreduce_dtype=float16'])
    model, optimizer = start(config, 0)
    assert optimizer._loss_scaling_is_dynamic
    before = {name: param.array.copy() for name, param in model.namedparams()}
    model.cleargrads()
    x, t = batches(1, numpy.float32)[0]
    model(x, t).backward()
    model.fc.W.grad[0, 0] = numpy.inf  # as a float16 allreduce leaves an overflow
    with pytest.warns(UserWarning, match='Non finite'):
        optimizer.update()
    for name, param in model.namedparams():
        numpy.testing.assert_array_equal(param.array, before[name], err_msg=name)
    model.cleargrads()
    model(x, t).backward()
    optimizer.update()
    assert not numpy.array_equal(model.fc.W.array, before['/fc/W'])  # a finite step is taken


def test_pure_nccl_is_asked_for_the_configured_allreduce_dtype():
    # ChainerMN's pure_nccl reduces in chainer.get_dtype() (float16 under mixed16) unless
    # told otherwise; the product used to tell it only about float16.
    for dtype in ('float32', 'float16'):
        assert runtime.communicator_options('pure_nccl', dtype) == {
            'allreduce_grad_dtype': dtype}
    # The others refuse the option (ChainerMN's ValueError) and reduce in float32.
    assert runtime.communicator_options(comm_module.INPLACE, 'float32') == {}
    assert runtime.communicator_options('flat', 'float32') == {}


def test_pure_nccl_broadcasts_each_parameter_in_its_own_dtype_under_mixed16():
    with chainer.using_config('dtype', chainer.mixed16):
        model = Small()
    groups = {dtype.name: [name for name, param in sorted(model.namedparams())
                           if any(param is p for p in params)]
              for dtype, params in comm_module.bcast_groups(model)}
    assert groups == {'float16': ['/conv/W', '/conv/b', '/fc/W', '/fc/b'],
                      'float32': ['/bn/beta', '/bn/gamma']}


def test_pure_nccl_is_the_products_communicator():
    from chainermn.communicators.pure_nccl_communicator import PureNcclCommunicator
    cls = comm_module.mean_first_nccl_class()
    assert issubclass(cls, PureNcclCommunicator)
    assert cls.bcast_data is not PureNcclCommunicator.bcast_data
    assert cls._multi_node_mean_nccl is not PureNcclCommunicator._multi_node_mean_nccl
    if not runtime.nccl_available():
        # Without NCCL it cannot be built; what raises is the product's class.
        with pytest.raises(RuntimeError, match='NCCL') as raised:
            comm_module.create_communicator('pure_nccl', allreduce_grad_dtype='float32')
        assert any(entry.frame.code.name == 'create_communicator'
                   and entry.path.name == 'comm.py' for entry in raised.traceback)


@pytest.mark.slow
def test_a_mixed16_job_resumed_continues_exactly(tiny_sop, tmp_path):
    """2 ranks, mixed16, the real launcher: a run of 2 epochs, and a job resumed from its
    checkpoint of epoch 1 (what a job stopped there wrote). Before the optimizer kept its
    float32 master weights and loss scale, epoch 2's loss was off (2.4155 against 2.4163
    here; 3.0e-3 relative on 24 images)."""
    mixed = ['train.dtype=mixed16', 'train.epochs=2']
    code, output = finish(train(tiny_sop, tmp_path / 'straight', *mixed))
    assert code == 0, output
    code, output = finish(train(tiny_sop, tmp_path / 'resumed', *mixed, 'resume={}'.format(
        tmp_path / 'straight' / 'snapshot_iter_3.npz')))
    assert code == 0, output
    assert 'at iteration 3' in output

    def log(name):
        return [{k: v for k, v in entry.items() if k != 'elapsed_time'}
                for entry in json.loads((tmp_path / name / 'log').read_text())]
    assert log('resumed') == log('straight')
    last = 'snapshot_iter_{}.npz'.format(log('straight')[-1]['iteration'])
    with numpy.load(str(tmp_path / 'straight' / last), allow_pickle=False) as expected, \
            numpy.load(str(tmp_path / 'resumed' / last), allow_pickle=False) as got:
        masters = [k for k in expected.files if k.endswith('/fp32_param')]
        assert masters and 'updater/optimizer:main/loss_scale' in expected.files
        for key in expected.files:
            if key.startswith(('updater/model:main/', 'updater/optimizer:main/')):
                numpy.testing.assert_array_equal(got[key], expected[key], err_msg=key)
