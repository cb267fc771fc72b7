"""distributed.runtime on the CPU: device and communicator choice, their errors, mixed16.

What needs a GPU (a CuPy device, NCCL, fp16 allreduce) is in test_gpu.py, marked ``gpu``.
"""
import importlib.util
import types

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

from distributed import comm as comm_module
from distributed import runtime as rt
from distributed.config import load_config
from distributed.data.converter import InputConverter
from distributed.optim import create_optimizer, create_schedule
from launching import run_launcher

NO_GPU = (0, 'no GPU in this test')
CPU = chainer.get_device('@numpy')


def error_of(call, *args, **kwargs):
    with pytest.raises(rt.StartupError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_cpu_and_auto_without_gpus_pick_the_cpu():
    assert rt.select_device('cpu', 0, 4, gpus=(8, '')).xp is numpy
    assert rt.select_device('auto', 3, 4, gpus=NO_GPU).xp is numpy


def test_a_gpu_id_without_gpus_says_why_and_what_to_do():
    message = error_of(rt.select_device, '0', 0, 1, gpus=(0, 'CuPy is not installed'))
    assert 'device=0 asks for a GPU, but CuPy is not installed' in message
    assert 'device=cpu' in message


def test_more_ranks_on_a_node_than_gpus_is_refused():
    message = error_of(rt.select_device, 'auto', 2, 4, gpus=(2, ''))
    assert '3 ranks on this node share 2 visible GPU(s)' in message
    assert '-npernode' in message and '--ntasks-per-node=2' in message


def test_a_gpu_id_under_several_ranks_asks_for_auto():
    assert 'use device=auto' in error_of(rt.select_device, '1', 0, 2, gpus=(8, ''))


def test_a_gpu_id_beyond_the_visible_ones_is_refused():
    assert 'only 2 GPU(s) visible (ids 0 to 1)' in error_of(rt.select_device, '2', 0, 1,
                                                            gpus=(2, ''))


def test_probe_names_the_missing_cupy():
    count, why = rt.probe_gpus()
    if importlib.util.find_spec('cupy') is None:
        assert (count, why.split(' (')[0]) == (0, 'CuPy is not installed')
    else:
        assert count > 0 or why.startswith('CuPy')


def test_communicator_auto_on_the_cpu_and_names_passed_through():
    assert rt.communicator_name('auto', CPU) == comm_module.INPLACE
    assert rt.communicator_name('naive', CPU) == 'naive'


def test_gpu_communicators_and_fp16_allreduce_are_refused_on_the_cpu():
    assert 'this rank computes on the CPU' in error_of(
        rt.check_communicator, 'pure_nccl', CPU, 'float32')
    message = error_of(rt.check_communicator, comm_module.INPLACE, CPU, 'float16')
    assert 'comm.allreduce_dtype=float16 needs the pure_nccl communicator' in message
    assert 'use comm.allreduce_dtype=float32' in message
    rt.check_communicator(comm_module.INPLACE, CPU, 'float32')
    rt.check_communicator('naive', CPU, 'float32')


def test_the_cpu_communicator_is_refused_on_a_gpu():
    gpu = types.SimpleNamespace(xp=object())  # what check_communicator reads of a device
    message = error_of(rt.check_communicator, comm_module.INPLACE, gpu, 'float32')
    assert 'reduces NumPy arrays on the CPU' in message and 'communicator=auto' in message


def test_describe_runtime_on_the_cpu():
    comm = comm_module.create_communicator(comm_module.INPLACE)
    text = rt.describe_runtime(rt.Runtime(comm, CPU, communicator=comm_module.INPLACE))
    assert text.startswith('runtime: 1 rank(s) on 1 node(s), one CPU each, communicator '
                           'inplace, precision float32')
    for part in ('chainer 7.8.1', 'chainercv 0.13.1', 'NumPy ' + numpy.__version__,
                 'CuPy', 'MPI: ', 'mpi4py', 'threads per rank: '):
        assert part in text


@pytest.mark.mpi
def test_one_failing_rank_stops_every_rank(world):
    # The last rank fails: alone, its message is the error itself; among others, every
    # rank raises it, naming the rank.
    failing = world.size - 1
    error = 'no GPU here' if world.rank == failing else None
    message = error_of(rt.agree, world, error)
    if world.size == 1:
        assert message == 'no GPU here'
    else:
        assert message == 'rank {} (1 of {} ranks failed): no GPU here'.format(
            failing, world.size)
    rt.agree(world, None)


@pytest.mark.mpi
def test_local_index_follows_cuda_visible_devices(world, monkeypatch):
    node = world.Split_type(__import__('mpi4py').MPI.COMM_TYPE_SHARED)
    try:
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')
        assert rt._local_index(node) == node.rank
        # A launcher that gives each rank its own GPU: each sees it as its GPU 0.
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', str(node.rank))
        assert rt._local_index(node) == 0
    finally:
        node.Free()


def test_input_converter_subtracts_the_mean_in_the_compute_dtype():
    rng = numpy.random.RandomState(0)
    images = rng.randint(0, 256, (2, 3, 4, 4)).astype(numpy.uint8)
    batch = [(images[i], numpy.int32(i)) for i in range(2)]
    mean = numpy.array([123.5, 117.0, 104.25], numpy.float32).reshape(3, 1, 1)
    converter = InputConverter(mean)
    x, t = converter(batch, CPU)
    assert (x.dtype, t.dtype) == (numpy.float32, numpy.int32)
    numpy.testing.assert_array_equal(x, images.astype(numpy.float32) - mean)
    numpy.testing.assert_array_equal(t, [0, 1])
    assert images.dtype == numpy.uint8  # the batch itself is left alone
    with chainer.using_config('dtype', chainer.mixed16):
        x16, t = converter(batch, -1)  # chainer's old-style device argument
    assert (x16.dtype, t.dtype) == (numpy.float16, numpy.int32)
    numpy.testing.assert_array_equal(x16, x.astype(numpy.float16))


class TinyNet(chainer.Chain):
    """Convolution, BatchNorm and a linear classifier: the layer kinds of ResNet."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, 8, 3, pad=1)
            self.bn = L.BatchNormalization(8)
            self.fc = L.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(F.average_pooling_2d(h, h.shape[2:]))


def test_mixed16_trains_on_the_cpu_with_float32_master_weights():
    config = load_config(None, ['train.dtype=mixed16', 'optimizer.lr=0.05',
                                'optimizer.weight_decay=0'])
    rng = numpy.random.RandomState(0)
    images = rng.randint(0, 256, (16, 3, 8, 8)).astype(numpy.uint8)
    labels = (images[:, 0].mean(axis=(1, 2)) / 256 * 3).astype(numpy.int32) % 3
    comm = comm_module.create_communicator(comm_module.INPLACE)
    with chainer.using_config('dtype', chainer.mixed16):
        model = L.Classifier(TinyNet())
        optimizer = create_optimizer(config, model, comm, create_schedule(config, 1, 4))
        iterator = chainer.iterators.SerialIterator(
            chainer.datasets.TupleDataset(images, labels), 4, shuffle=False)
        updater = chainer.training.StandardUpdater(iterator, optimizer,
                                                   converter=InputConverter(127.5))
        before = model.predictor.conv.W.array.copy()
        losses = []
        for _ in range(8):
            updater.update()
            losses.append(float(model.loss.array))
    conv = model.predictor.conv
    assert conv.W.dtype == numpy.float16 and model.loss.dtype == numpy.float16
    assert model.predictor.bn.gamma.dtype == numpy.float32
    master = conv.W.update_rule._fp32_param
    assert master.dtype == numpy.float32
    numpy.testing.assert_array_equal(master.array.astype(numpy.float16), conv.W.array)
    assert not numpy.array_equal(before, conv.W.array)
    assert all(numpy.isfinite(losses)), losses
    # Dynamic loss scaling doubles the scale after every step without overflow; ChainerMN's
    # first update broadcasts the weights instead of stepping, so 8 updates are 7 steps.
    assert optimizer._loss_scaling_is_dynamic and optimizer._loss_scale == 2.0 ** 7


def test_gpu_id_without_gpus_stops_both_ranks_with_one_message(tmp_path):
    done = run_launcher('launch.train', ['-c', 'configs/smoke.yaml', 'device=0',
                                         'data.loader=serial', 'out=' + str(tmp_path)],
                        ranks=2, timeout=120)
    assert done.returncode == 2, done.stderr
    assert 'Traceback' not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, done.stderr
    assert 'device=0' in errors[0] and 'rank 0 (2 of 2 ranks failed)' in errors[0]


def test_fp16_allreduce_on_the_cpu_is_a_config_error(tmp_path):
    done = run_launcher('launch.train', ['-c', 'configs/smoke.yaml', 'device=cpu',
                                         'comm.allreduce_dtype=float16', 'data.loader=serial',
                                         'out=' + str(tmp_path)], timeout=120)
    assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
    assert 'comm.allreduce_dtype=float16 needs the pure_nccl communicator' in done.stderr
