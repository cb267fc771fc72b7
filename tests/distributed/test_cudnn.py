"""The cuDNN-frontend path of Convolution2D and BatchNorm (distributed/cudnn/), on the CPU.

The frontend is a stand-in (tests/helpers/cudnn_standin.py) that records graphs and runs them with
NumPy from cuDNN's definitions; the arrays are NumPy's. Results are compared with chainer's
own CPU path: shapes, strides, values, running statistics. Numerics and speed on a GPU are
scripts/cudnn_check.py's.
"""
import os
import subprocess
import sys
import typing

import distributed  # noqa: F401  (compat shims before chainer)
import chainer
import chainer.functions as F
import numpy
import pytest
from chainer.functions.connection import convolution_2d, deconvolution_2d
from chainer.functions.normalization import batch_normalization as bn

import cudnn_standin
from distributed import config as config_module
from distributed.cudnn import dispatch, graphs
from launching import REPO

CHAINERS = {(cls, name): cls.__dict__[name] for cls, name in [
    (convolution_2d.Convolution2DFunction, 'forward_gpu'),
    (deconvolution_2d.Deconvolution2DFunction, 'forward_gpu'),
    (convolution_2d.Convolution2DGradW, 'forward_gpu'),
    (bn.BatchNormalization, 'forward'), (bn.FixedBatchNormalization, 'forward')]}

# (x shape, W shape, stride, pad, dilate, groups): ResNet-50's kinds of convolution (7x7/2
# stem, 1x1, 3x3, 1x1/2 projection) at a small size, and dilated, grouped, non-square ones.
CONVS = [
    ((2, 3, 15, 15), (8, 3, 7, 7), 2, 3, 1, 1),
    ((2, 8, 6, 6), (4, 8, 1, 1), 1, 0, 1, 1),
    ((2, 4, 7, 7), (4, 4, 3, 3), 1, 1, 1, 1),
    ((2, 4, 7, 7), (4, 4, 3, 3), 2, 1, 1, 1),
    ((2, 8, 8, 8), (6, 8, 1, 1), 2, 0, 1, 1),
    ((1, 4, 9, 7), (6, 2, 3, 3), (2, 1), (1, 2), (2, 1), 2),
]


@pytest.fixture
def fe():
    """A Frontend over a fresh stand-in, installed into chainer; chainer's methods are
    restored afterwards."""
    frontend = graphs.Frontend(cudnn_standin.make(), numpy, stream=lambda: 7)
    yield frontend
    dispatch.uninstall()


def _random(shape, dtype=numpy.float32, seed=0):
    return numpy.random.RandomState(seed).uniform(-1, 1, shape).astype(dtype)


def _conv_node(x_shape, w_shape, stride, pad, dilate, groups, cover_all=False):
    node = convolution_2d.Convolution2DFunction(stride, pad, cover_all, dilate=dilate,
                                                groups=groups)
    node._input_layouts = (None, None)
    return node


@pytest.mark.parametrize('x_shape, w_shape, stride, pad, dilate, groups', CONVS)
def test_convolution_and_its_gradients_match_chainer(
        fe, x_shape, w_shape, stride, pad, dilate, groups):
    x, W = _random(x_shape), _random(w_shape, seed=1)
    xv, Wv = chainer.Variable(x), chainer.Variable(W)
    y = F.convolution_2d(xv, Wv, stride=stride, pad=pad, dilate=dilate, groups=groups)
    gy = _random(y.shape, seed=2)
    y.grad = gy
    y.backward()
    node = _conv_node(x_shape, w_shape, stride, pad, dilate, groups)

    ours = fe.convolution_forward(x, W, node)
    gx = fe.convolution_grad_input(gy, W, node, x.shape[2:])
    gW = fe.convolution_grad_weight(x, gy, node, W.shape)

    assert ours.shape == y.shape and gx.shape == x.shape and gW.shape == W.shape
    numpy.testing.assert_allclose(ours, y.array, rtol=1e-5, atol=1e-5)
    numpy.testing.assert_allclose(gx, xv.grad, rtol=1e-5, atol=1e-5)
    numpy.testing.assert_allclose(gW, Wv.grad, rtol=1e-5, atol=1e-5)
    # The graphs describe what chainer hands over and gets back: NCHW, C-contiguous.
    fprop = fe.fe.graphs[0]
    dims = {t.name: (t.dim, t.stride) for t in fprop.tensors if t.dim}
    assert dims['x'] == (list(x.shape), [s // 4 for s in x.strides])
    contiguous_y = numpy.empty(y.shape, numpy.float32)
    assert dims['conv_fprop::0'] == (list(y.shape), [s // 4 for s in contiguous_y.strides])


def test_output_sizes_are_chainers_for_every_resnet50_convolution(fe):
    # Every (kernel, stride, pad) of ResNet-50 at 224 px and the sizes its layers see.
    for size, k, s, p in [(224, 7, 2, 3), (56, 1, 1, 0), (56, 3, 1, 1), (56, 3, 2, 1),
                          (28, 3, 2, 1), (14, 3, 2, 1), (56, 1, 2, 0), (28, 1, 2, 0),
                          (14, 1, 2, 0), (7, 3, 1, 1)]:
        expected = chainer.utils.conv.get_conv_outsize(size, k, s, p)
        assert graphs.conv_out_size(size, k, s, p, 1) == expected
        node = _conv_node(None, None, s, p, 1, 1)
        y = fe.convolution_forward(numpy.zeros((1, 1, size, size), numpy.float32),
                                   numpy.zeros((1, 1, k, k), numpy.float32), node)
        assert y.shape == (1, 1, expected, expected)


def test_float16_graphs_are_half_with_float_compute(fe):
    x, W = _random((2, 4, 5, 5), numpy.float16), _random((4, 4, 3, 3), numpy.float16, 1)
    y = fe.convolution_forward(x, W, _conv_node(None, None, 1, 1, 1, 1))
    expected = F.convolution_2d(x.astype(numpy.float32), W.astype(numpy.float32), pad=1)
    assert y.dtype == numpy.float16
    numpy.testing.assert_allclose(y, expected.array, rtol=1e-2, atol=1e-2)
    graph = fe.fe.graphs[0]
    assert graph.properties['io_data_type'] is cudnn_standin.data_type.HALF
    assert graph.properties['compute_data_type'] is cudnn_standin.data_type.FLOAT
    assert graph.deselected == []  # tensor cores are what float16 is for


def test_tf32_is_a_setting_off_by_default(fe):
    x, W = _random((1, 2, 4, 4)), _random((2, 2, 1, 1))
    node = _conv_node(None, None, 1, 0, 1, 1)
    fe.convolution_forward(x, W, node)
    tf32 = graphs.Frontend(cudnn_standin.make(), numpy, tf32=True, stream=lambda: 0)
    tf32.convolution_forward(x, W, node)
    assert fe.fe.graphs[0].deselected == [cudnn_standin.numerical_note.TENSOR_CORE]
    assert tf32.fe.graphs[0].deselected == []
    assert not dispatch.tf32_from_environment({})
    assert dispatch.tf32_from_environment({'CUPY_TF32': '1'})
    assert not dispatch.tf32_from_environment({'CUPY_TF32': '0'})
    with chainer.using_config('cudnn_deterministic', True):
        fe.convolution_grad_weight(x, _random((1, 2, 4, 4)), node, W.shape)
    assert cudnn_standin.numerical_note.NONDETERMINISTIC in fe.fe.graphs[-1].deselected


def test_a_graph_is_built_once_per_case(fe):
    node = _conv_node(None, None, 1, 1, 1, 1)
    W = _random((4, 4, 3, 3))
    for seed in range(3):
        fe.convolution_forward(_random((2, 4, 6, 6), seed=seed), W, node)
    assert fe.builds == 1 and len(fe.fe.graphs) == 1 and fe.fe.executions == 3
    fe.convolution_forward(_random((3, 4, 6, 6)), W, node)  # another batch size
    fe.convolution_forward(_random((2, 4, 6, 6), numpy.float16), W.astype(numpy.float16),
                           node)
    assert fe.builds == 3
    keys = list(fe.graphs)
    assert keys[0].arrays[0] == ((2, 4, 6, 6), (144, 36, 6, 1))
    assert keys[1].arrays[0][0] == (3, 4, 6, 6)
    assert (keys[0].dtype, keys[2].dtype) == ('float32', 'float16')
    assert keys[0].layout == 'NCHW' and keys[0].op == 'conv_fprop'
    assert dict(keys[0].params)['pad'] == (1, 1)
    # The handle runs on the stream the array library says is current.
    assert set(fe.fe.streams) == {7}


def test_a_declined_case_is_cached_and_runs_chainers_path(monkeypatch, fe):
    # monkeypatch first: its undoing comes after ``fe``'s uninstall, which puts back the
    # method kept at install (the stand-in below), so chainer's own is what stays.
    # chainer's own GPU method stands in for itself with its CPU method, so that the
    # fallback's result can be compared on this machine.
    monkeypatch.setattr(convolution_2d.Convolution2DFunction, 'forward_gpu',
                        convolution_2d.Convolution2DFunction.forward_cpu)
    fe.fe.decline = lambda graph: any(op[1]['dilation'] != [1, 1] for op in graph.ops)
    dispatch.install(fe)
    x, W = _random((1, 2, 7, 7)), _random((3, 2, 3, 3))
    expected = F.convolution_2d(x, W, pad=2, dilate=2).array
    for _ in range(2):
        node = _conv_node(None, None, 1, 2, 2, 1)
        y, = node.forward_gpu((x, W))
        numpy.testing.assert_allclose(y, expected, rtol=1e-6)
    assert len(fe.declined) == 1 and fe.builds == 0
    assert len(fe.fe.graphs) == 1  # the declined case was not built a second time
    assert next(iter(fe.declined.values())).startswith('cudnnGraphNotSupportedError')
    # Accepted: the frontend's result, chainer's method not called.
    node = _conv_node(None, None, 1, 1, 1, 1)
    y, = node.forward_gpu((x, W))
    numpy.testing.assert_allclose(y, F.convolution_2d(x, W, pad=1).array, rtol=1e-5)
    assert fe.builds == 1
    # cover_all and chainer's use_cudnn='never' go to chainer without asking cuDNN.
    builds = len(fe.fe.graphs)
    node = _conv_node(None, None, 2, 0, 1, 1, cover_all=True)
    y, = node.forward_gpu((x, W))
    numpy.testing.assert_allclose(y, F.convolution_2d(x, W, stride=2, cover_all=True).array,
                                  rtol=1e-6)
    with chainer.using_config('use_cudnn', 'never'):
        _conv_node(None, None, 1, 1, 1, 1).forward_gpu((x, W))
    assert len(fe.fe.graphs) == builds and fe.fe.executions == 1


def test_install_replaces_the_gpu_methods_and_keeps_chainers(fe):
    classes = [(convolution_2d.Convolution2DFunction, 'forward_gpu'),
               (deconvolution_2d.Deconvolution2DFunction, 'forward_gpu'),
               (convolution_2d.Convolution2DGradW, 'forward_gpu'),
               (bn.BatchNormalization, 'forward'), (bn.FixedBatchNormalization, 'forward')]
    originals = [cls.__dict__[name] for cls, name in classes]
    dispatch.install(fe)
    dispatch.install(fe)  # twice: chainer's methods are still the ones kept
    assert [dispatch.CHAINER_METHODS[c] for c in classes] == originals
    assert all(cls.__dict__[name] is not orig for (cls, name), orig in zip(classes, originals))
    dispatch.uninstall()
    assert [cls.__dict__[name] for cls, name in classes] == originals


def test_gradients_run_through_the_installed_methods(fe):
    dispatch.install(fe)
    x, W = _random((2, 4, 7, 7)), _random((6, 4, 3, 3), seed=1)
    gy = _random((2, 6, 4, 4), seed=2)
    node = _conv_node(None, None, 2, 1, 1, 1)
    deconv = deconvolution_2d.Deconvolution2DFunction(2, 1, (7, 7))
    deconv._input_layouts = (None, None)
    gx, = deconv.forward_gpu((gy, W))
    grad_w = convolution_2d.Convolution2DGradW(node, W.shape, W.dtype, None)
    grad_w._input_layouts = (None, None)
    gW, = grad_w.forward_gpu((x, gy))
    xv, Wv = chainer.Variable(x), chainer.Variable(W)
    y = F.convolution_2d(xv, Wv, stride=2, pad=1)
    y.grad = gy
    y.backward()
    numpy.testing.assert_allclose(gx, xv.grad, rtol=1e-5, atol=1e-5)
    numpy.testing.assert_allclose(gW, Wv.grad, rtol=1e-5, atol=1e-5)
    assert [g.ops[0][0] for g in fe.fe.graphs] == ['conv_dgrad', 'conv_wgrad']


def test_running_statistics_are_chainers():
    # chainer's own update on the CPU, then ours from cuDNN's saved mean and inv_std.
    x = _random((4, 3, 5, 5)) * 3 + 1
    gamma, beta = _random(3, seed=1), _random(3, seed=2)
    eps, decay = 2e-5, 0.9
    mean0, var0 = _random(3, seed=3), _random(3, seed=4) + 2
    chainer_mean, chainer_var = mean0.copy(), var0.copy()
    F.batch_normalization(x, gamma, beta, eps=eps, running_mean=chainer_mean,
                          running_var=chainer_var, decay=decay)
    mean = x.mean(axis=(0, 2, 3))
    inv_std = (1 / numpy.sqrt(x.var(axis=(0, 2, 3)) + eps)).astype(numpy.float32)
    ours_mean, ours_var = mean0.copy(), var0.copy()
    graphs.update_running_stats(ours_mean, ours_var, mean, inv_std, eps, decay, 4 * 5 * 5)
    numpy.testing.assert_allclose(ours_mean, chainer_mean, rtol=1e-6)
    numpy.testing.assert_allclose(ours_var, chainer_var, rtol=1e-5)
    # The unbiased variance: m / (m - 1) of the batch's.
    unbiased = x.var(axis=(0, 2, 3), ddof=1)
    numpy.testing.assert_allclose(ours_var, decay * var0 + (1 - decay) * unbiased, rtol=1e-5)
    assert graphs.momentum_from_decay(decay) == pytest.approx(0.1)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float16])
def test_batch_norm_through_chainer_matches_chainer(fe, dtype):
    x = (_random((4, 3, 5, 5)) * 2 + 0.5).astype(dtype)
    gamma, beta = _random(3, seed=1) + 1.5, _random(3, seed=2)
    gy = _random(x.shape, dtype, seed=3)
    results = []
    for installed in (False, True):
        if installed:
            dispatch.install(fe)
        mean, var = numpy.zeros(3, numpy.float32), numpy.ones(3, numpy.float32)
        xv, gv, bv = chainer.Variable(x), chainer.Variable(gamma), chainer.Variable(beta)
        y = F.batch_normalization(xv, gv, bv, eps=2e-5, running_mean=mean, running_var=var,
                                  decay=0.9)
        y.grad = gy
        y.backward()
        inference = F.fixed_batch_normalization(x, gamma, beta, mean, var, eps=2e-5)
        results.append((y.array, xv.grad, gv.grad, bv.grad, mean, var, inference.array))
    tol = 1e-5 if dtype == numpy.float32 else 2e-2
    for chainers, ours in zip(*results):
        assert ours.dtype == chainers.dtype and ours.shape == chainers.shape
        numpy.testing.assert_allclose(ours.astype(numpy.float32), chainers.astype(
            numpy.float32), rtol=tol, atol=tol)
    ops = [g.ops[0][0] for g in fe.fe.graphs]
    assert ops == ['batchnorm', 'batchnorm_backward', 'batchnorm_inference']


def test_batch_norm_over_other_axes_stays_chainers(fe):
    dispatch.install(fe)
    x, gamma = _random((4, 3)), _random(3)
    F.batch_normalization(x, gamma, _random(3))
    assert fe.fe.graphs == []


def test_a_declined_batch_norm_runs_chainers_forward_and_backward(fe):
    fe.fe.decline = lambda graph: True
    dispatch.install(fe)
    x = _random((4, 3, 5, 5))
    xv = chainer.Variable(x)
    y = F.batch_normalization(xv, _random(3, seed=1), _random(3, seed=2))
    y.grad = numpy.ones_like(x)
    y.backward()
    dispatch.uninstall()
    xc = chainer.Variable(x)
    yc = F.batch_normalization(xc, _random(3, seed=1), _random(3, seed=2))
    yc.grad = numpy.ones_like(x)
    yc.backward()
    numpy.testing.assert_allclose(y.array, yc.array, rtol=1e-6)
    numpy.testing.assert_allclose(xv.grad, xc.grad, rtol=1e-5, atol=1e-6)
    assert len(fe.declined) == 1 and fe.fe.executions == 0


def test_choose_the_implementation():
    def missing():
        raise dispatch.Unavailable('no frontend')
    assert dispatch.choose('auto', True, False, missing)[0] == 'chainer'
    assert dispatch.choose('chainer', True, False, missing)[0] == 'chainer'
    assert dispatch.choose('auto', False, False, missing) == ('chainer', 'on the CPU')
    with pytest.raises(dispatch.Unavailable,
                       match='runs on GPUs, but this rank computes on the CPU'):
        dispatch.choose('cudnn', False, False, missing)
    assert dispatch.choose('cudnn', True, True, missing)[0] == 'chainer'
    assert dispatch.choose('cudnn', True, False, lambda: None)[0] == 'cudnn'
    with pytest.raises(dispatch.Unavailable, match='no frontend'):
        dispatch.choose('cudnn', True, False, missing)
    with pytest.raises(ValueError, match='train.conv_bn must be one of auto, cudnn, chainer'):
        dispatch.choose('fast', True, False, missing)


def test_a_missing_frontend_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'cudnn', None)
    with pytest.raises(dispatch.Unavailable) as e:
        dispatch.load_frontend()
    assert 'pip install nvidia-cudnn-frontend' in str(e.value)
    assert 'train.conv_bn=chainer' in str(e.value) and '\n' not in str(e.value)


def test_the_config_key(tmp_path):
    assert config_module.Config().train.conv_bn == 'auto'
    conv_bn = typing.get_type_hints(config_module.TrainConfig)['conv_bn']
    assert config_module.choices(conv_bn) == dispatch.IMPLS
    assert config_module.load_config(overrides=['train.conv_bn=cudnn',
                                                'out={}'.format(tmp_path)]).train.conv_bn \
        == 'cudnn'
    with pytest.raises(config_module.ConfigError,
                       match="train.conv_bn must be one of auto, cudnn, chainer, not 'fast'"):
        config_module.load_config(overrides=['train.conv_bn=fast'])


def test_the_log_says_which_path_runs(fe, monkeypatch):
    monkeypatch.setattr(dispatch, '_CHOICE', ('chainer', 'on the CPU'))
    assert "chainer's own CuPy kernels" in dispatch.describe()
    dispatch.install(fe)
    monkeypatch.setattr(dispatch, '_CHOICE', ('cudnn', 'train.conv_bn=cudnn'))
    line = dispatch.describe()
    assert 'cuDNN 91000 through the cuDNN frontend' in line
    assert 'NCHW' in line and 'TF32 off' in line


def test_chainers_methods_are_back_after_the_tests_above():
    assert all(cls.__dict__[name] is method for (cls, name), method in CHAINERS.items())


def test_the_gpu_check_script_starts_on_the_cpu():
    out = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'cudnn_check.py'),
                          '--help'], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'torch.compile' in out.stdout and '--batches' in out.stdout
