"""The benchmark end to end at 1 and 2 ranks, and the product's gradient allreduce."""
import json
import os

import chainer
import numpy
import pytest

from launching import run_launcher

TINY = ['crop_size=32', 'batch_size=2', 'iterations=2', 'warmup=1', 'allreduce_rounds=2',
        'pipeline_images=3', 'pipeline_rounds=1', 'pipeline_crop=32', 'device=cpu']
KEYS = ('images_per_sec', 'ranks', 'allreduce_s', 'allreduce_raw_s', 'allreduce_ratio',
        'pipeline_img_per_sec', 'pipeline_baseline_img_per_sec', 'pipeline_speedup',
        'decode_img_per_sec')


@pytest.mark.parametrize('ranks', [1, 2])
def test_benchmark_writes_every_number(tmp_path, ranks):
    out = tmp_path / 'bench'
    done = run_launcher('launch.benchmark', TINY + ['out={}'.format(out)], ranks=ranks)
    assert done.returncode == 0, done.stderr
    assert 'img/s' in done.stdout and 'allreduce' in done.stdout
    with open(os.path.join(str(out), 'benchmark.json')) as f:
        result = json.load(f)
    for key in KEYS:
        assert key in result, key
    assert result['ranks'] == ranks
    assert result['communicator'] == 'InPlaceMeanGrad'
    assert 0 < result['images_per_sec'] < 10000
    assert result['images_per_sec'] == pytest.approx(
        result['images_per_sec_per_rank'] * ranks, rel=0.5)
    assert result['allreduce_raw_s'] == min(result['allreduce_raw_flat_s'],
                                            result['allreduce_raw_arrays_s'])
    assert result['allreduce_ratio'] == pytest.approx(
        result['allreduce_s'] / result['allreduce_raw_s'])
    # ResNet-50 with 12 classes: 161 parameter arrays, about 94 MB of float32 gradients.
    assert result['allreduce_arrays'] == 161
    assert 90e6 < result['allreduce_bytes'] < 100e6
    parts = result['parts_s']
    assert all(parts[k] >= 0 for k in ('data', 'forward', 'allreduce', 'update'))
    assert parts['forward'] < parts['step']
    assert 0 <= result['exposed_comm_share'] < 1
    assert result['pipeline_speedup'] == pytest.approx(
        result['pipeline_img_per_sec'] / result['pipeline_baseline_img_per_sec'])
    assert result['decode_img_per_sec'] > 0


def test_benchmark_rejects_bad_keys(tmp_path):
    done = run_launcher('launch.benchmark', ['batch_size=0', 'out={}'.format(tmp_path)])
    assert done.returncode == 2
    assert 'batch_size must be positive' in done.stderr
    assert 'Traceback' not in done.stderr
    done = run_launcher('launch.benchmark', ['crop=64'])
    assert done.returncode == 2 and "unknown config key 'crop'" in done.stderr


class _Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.a = chainer.links.Linear(3, 4)
            self.b = chainer.links.Linear(4, 2)


@pytest.mark.mpi
def test_inplace_allreduce_is_the_mean_over_ranks(world):
    from distributed.comm import create_communicator
    comm = create_communicator('inplace')
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
    # Same result as ChainerMN's naive communicator, reached through its optimizer.
    net.cleargrads()
    for param in params:
        param.grad = numpy.full(param.shape, comm.rank + 1.0, numpy.float32)
    comm.multi_node_mean_grad(net, zero_fill=True)
    for param in params:
        numpy.testing.assert_allclose(param.grad, expected_factor)
    assert comm.size == world.size


def test_float16_allreduce_on_cpu_is_a_clear_error():
    from distributed.comm import create_communicator
    with pytest.raises(ValueError, match='pure_nccl'):
        create_communicator('inplace', allreduce_grad_dtype='float16')
