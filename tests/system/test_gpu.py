"""The GPU path: CuPy shims (on the CPU, with a stand-in cupy) and, marked ``gpu``, real GPU
checks that skip where CuPy sees no GPU (run them with ``pytest -m gpu`` on a GPU machine;
scripts/gpu_check.sh does).
"""
import os
import subprocess
import sys
import textwrap

import numpy
import pytest

from distributed import runtime as rt
from launching import REPO


# A stand-in for CuPy, used only to test how distributed.compat treats an installed CuPy
# on a machine where the real one cannot be installed (no CUDA here). It reproduces the
# two behaviours of CuPy 14 that the shims answer: its version, and cupy.cuda.nccl warning
# at import when libnccl is missing (CuPy 14.2's cupy/cuda/nccl.py does this).
FAKE_CUPY = {
    'cupy/__init__.py': "__version__ = '{version}'\n",
    'cupy/cuda/__init__.py': '',
    'cupy/cuda/nccl.py': textwrap.dedent('''\
        import warnings
        available = False
        warnings.warn('nccl library could not be loaded.')
        '''),
}

PROBE = textwrap.dedent('''\
    import warnings
    warnings.simplefilter('always')
    with warnings.catch_warnings(record=True) as seen:
        import distributed
        import chainer
        import chainermn
        warnings.warn_explicit('cuDNN is not enabled.', UserWarning, 'cuda.py', 1,
                               module='chainer.backends.cuda')
    print(repr(distributed.compat.APPLIED))
    print(repr([str(w.message) for w in seen]))
    ''')


def with_fake_cupy(tmp_path, version):
    for path, text in FAKE_CUPY.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text.format(version=version))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    done = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    applied, messages = [eval(line) for line in done.stdout.splitlines()[-2:]]
    return applied, messages


def test_cupy14_no_cudnn_warning_and_quiet_nccl_import(tmp_path):
    applied, messages = with_fake_cupy(tmp_path, '14.2.0')
    assert 'cuDNN warning silenced (CuPy 14)' in applied
    assert 'cupy.cuda.nccl imported quietly (no libnccl)' in applied
    assert not [m for m in messages if 'nccl' in m or 'cuDNN' in m], messages


def test_cupy13_keeps_the_cudnn_warning(tmp_path):
    # CuPy 13 has cuDNN: a missing one is the user's to fix, so chainer's advice stands.
    applied, messages = with_fake_cupy(tmp_path, '13.6.0')
    assert not [a for a in applied if 'cuDNN' in a]
    assert 'cuDNN is not enabled.' in messages


# ---- Real GPU checks -------------------------------------------------------------------

GPUS, WHY = rt.probe_gpus()
gpu = pytest.mark.skipif(GPUS == 0, reason='no GPU: ' + WHY + '; scripts/gpu_check.sh runs '
                         'these on a GPU machine')


def tiny_batch(xp, size=8, crop=64):
    rng = numpy.random.RandomState(0)
    x = rng.standard_normal((size, 3, crop, crop)).astype(numpy.float32)
    t = (numpy.arange(size) % 12).astype(numpy.int32)
    return xp.asarray(x), xp.asarray(t)


@pytest.mark.gpu
@gpu
def test_select_device_gives_a_cupy_device():
    import cupy
    device = rt.select_device('0', 0, 1)
    assert device.xp is cupy and device.device.id == 0
    assert rt.select_device('auto', GPUS - 1, GPUS).device.id == GPUS - 1


@pytest.mark.gpu
@gpu
def test_resnet_forward_backward_matches_the_cpu():
    import chainer
    from distributed.model import create_model
    device = rt.select_device('0', 0, 1)
    device.use()
    cpu = create_model(zero_gamma=False)
    x, t = tiny_batch(numpy, size=4)
    with chainer.using_config('train', False):
        expected = cpu.predictor(x).array
    model = cpu.copy(mode='copy')
    model.to_device(device)
    with chainer.using_config('train', False):
        got = model.predictor(device.send(x)).array
    numpy.testing.assert_allclose(chainer.backend.CpuDevice().send(got), expected,
                                  rtol=1e-2, atol=1e-2)
    loss = model(device.send(x), device.send(t))
    loss.backward()
    assert bool(device.xp.isfinite(model.predictor.conv1.conv.W.grad).all())


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('dtype', ['float32', 'mixed16'])
def test_training_steps_lower_the_loss_on_a_gpu(dtype):
    import chainer
    from distributed.config import load_config
    from distributed.model import create_model
    from distributed.optim import create_optimizer, create_schedule
    config = load_config(None, ['train.dtype=' + dtype, 'optimizer.lr=0.05',
                                'optimizer.weight_decay=0'])
    device = rt.select_device('0', 0, 1)
    device.use()
    comm = rt.comm_module.create_communicator(
        'pure_nccl' if rt.nccl_available() else 'naive')
    losses = []
    with chainer.using_config('dtype', chainer.mixed16 if dtype == 'mixed16'
                              else numpy.dtype(dtype)):
        model = create_model()
        model.to_device(device)
        optimizer = create_optimizer(config, model, comm, create_schedule(config, 1, 10))
        x, t = tiny_batch(device.xp)
        x = x.astype(chainer.get_dtype())
        for _ in range(12):
            optimizer.update(model, x, t)
            losses.append(float(model.loss.array))
    assert all(numpy.isfinite(losses)), losses
    assert min(losses[-3:]) < losses[1], losses
    if dtype == 'mixed16':
        conv = model.predictor.conv1.conv
        assert conv.W.dtype == numpy.float16
        assert conv.W.update_rule._fp32_param.dtype == numpy.float32


@pytest.mark.gpu
@gpu
@pytest.mark.skipif(not rt.nccl_available(), reason='CuPy cannot load NCCL here (pip install '
                    'nvidia-nccl-cu12 or -cu13 to run it)')
@pytest.mark.parametrize('allreduce_dtype', [None, 'float16'])
def test_pure_nccl_mean_grad_on_one_rank(allreduce_dtype):
    import chainer
    import chainermn
    device = rt.select_device('0', 0, 1)
    device.use()
    kwargs = {'allreduce_grad_dtype': allreduce_dtype} if allreduce_dtype else {}
    comm = chainermn.create_communicator('pure_nccl', **kwargs)
    link = chainer.links.Linear(64, 32)
    link.to_device(device)
    link.cleargrads()
    loss = chainer.functions.sum(link(device.xp.ones((4, 64), numpy.float32)))
    loss.backward()
    expected = link.W.grad.copy()
    comm.multi_node_mean_grad(link)
    tolerance = 1e-2 if allreduce_dtype else 1e-6
    device.xp.testing.assert_allclose(link.W.grad, expected, rtol=tolerance)


@pytest.mark.gpu
@gpu
def test_input_converter_normalises_uint8_batches_on_the_gpu():
    import chainer
    device = rt.select_device('0', 0, 1)
    rng = numpy.random.RandomState(0)
    batch = [(rng.randint(0, 256, (3, 8, 8)).astype(numpy.uint8), numpy.int32(i))
             for i in range(4)]
    converter = rt.InputConverter(numpy.array([120.0, 110.0, 100.0]).reshape(3, 1, 1))
    expected, _ = converter(batch)
    x, t = converter(batch, device)
    assert device.xp is not numpy and isinstance(x, device.xp.ndarray)
    numpy.testing.assert_array_equal(chainer.backend.CpuDevice().send(x), expected)
    with chainer.using_config('dtype', chainer.mixed16):
        x16, _ = converter(batch, device)
    assert x16.dtype == numpy.float16


@pytest.mark.gpu
@gpu
def test_describe_runtime_names_the_gpu_stack():
    import cupy
    device = rt.select_device('0', 0, 1)
    comm = rt.comm_module.create_communicator('naive')
    text = rt.describe_runtime(rt.Runtime(comm, device, communicator='pure_nccl'))
    assert 'one GPU each' in text
    assert 'CuPy {}'.format(cupy.__version__) in text and 'CUDA runtime' in text
    assert 'cuDNN' in text and 'NCCL' in text


# ---- The GPU check script and the SLURM example, as far as a CPU machine allows --------

@pytest.mark.parametrize('script', ['scripts/gpu_check.sh', 'scripts/slurm/train.sbatch'])
def test_scripts_parse(script):
    done = subprocess.run(['bash', '-n', os.path.join(REPO, script)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(GPUS > 0, reason='this machine has a GPU: gpu_check.sh would run')
def test_gpu_check_stops_clearly_without_a_gpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, VENV=str(tmp_path / 'venv'),
               OUT=str(tmp_path / 'out'))
    done = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'gpu_check.sh')], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith('gpu_check: no GPU visible: CuPy')
    assert 'Traceback' not in done.stderr
    assert not (tmp_path / 'venv').exists()


# ---- Mixed precision through pure_nccl (issue 18) --------------------------------------
# What the product decides is tested on the CPU (tests/system/test_mixed_precision.py); what the
# communicator does with it is tested here, on one GPU: NCCL refuses two ranks on one
# device, so the sum across ranks itself (divided first) needs a machine with two GPUs.

needs_nccl = pytest.mark.skipif(not rt.nccl_available(), reason='CuPy cannot load NCCL here '
                                '(pip install nvidia-nccl-cu12 or -cu13 to run it)')
NOT_FLOAT16 = 1 + 2.0 ** -12
"""A float32 number that float16 rounds (to 1.0)."""


def mixed16_chain(device):
    import chainer
    import chainer.links as L
    with chainer.using_config('dtype', chainer.mixed16):
        model = chainer.Chain()
        with model.init_scope():
            model.conv = L.Convolution2D(3, 4, 3)
            model.bn = L.BatchNormalization(4)
    model.to_device(device)
    return model


@pytest.mark.gpu
@gpu
@needs_nccl
def test_pure_nccl_keeps_float32_parameters_and_gradients_float32_under_mixed16():
    import chainer
    import chainermn
    device = rt.select_device('0', 0, 1)
    device.use()
    xp = device.xp
    with chainer.using_config('dtype', chainer.mixed16):
        comm = rt.comm_module.create_communicator(
            'pure_nccl', **rt.communicator_options('pure_nccl', 'float32'))
        model = mixed16_chain(device)
        assert model.conv.W.dtype == numpy.float16 and model.bn.gamma.dtype == numpy.float32
        model.bn.gamma.array[:] = NOT_FLOAT16
        weights = model.conv.W.array.copy()
        comm.bcast_data(model)  # what every start and resume does
        assert bool((model.bn.gamma.array == NOT_FLOAT16).all())
        assert bool((model.conv.W.array == weights).all())

        model.bn.gamma.grad = xp.full(4, NOT_FLOAT16, numpy.float32)
        model.bn.beta.grad = xp.zeros(4, numpy.float32)
        model.conv.W.grad = xp.full(model.conv.W.shape, 3, numpy.float16)
        model.conv.b.grad = xp.zeros(4, numpy.float16)
        comm.multi_node_mean_grad(model)
        assert bool((model.bn.gamma.grad == NOT_FLOAT16).all()), 'reduced in float16'
        assert bool((model.conv.W.grad == 3).all())

        # ChainerMN's own, as the product used it, rounds them through float16.
        theirs = chainermn.create_communicator('pure_nccl')
        theirs.bcast_data(model)
        assert bool((model.bn.gamma.array == 1).all())


@pytest.mark.gpu
@gpu
def test_the_division_before_the_float16_sum():
    # pure_nccl divides each rank's gradients by the rank count before the NCCL sum: 4
    # ranks' 60000 sum to 60000, where the float16 sum first would be inf.
    device = rt.select_device('0', 0, 1)
    device.use()
    values = numpy.array([60000, 65504, -65504, 3e-3, 1, 0], numpy.float16)
    array = device.send(values)
    rt.comm_module.divide_in_place(array, 4)
    expected = (values.astype(numpy.float64) / 4).astype(numpy.float16)
    numpy.testing.assert_array_equal(device.xp.asnumpy(array), expected)
