"""Convolution2D and BatchNormalization on GPUs through NVIDIA's cuDNN frontend.

CuPy 14 removed its cuDNN bindings, so chainer 7.8.1 runs convolutions as im2col + GEMM
and BatchNorm as separate reductions. This module runs the operations that dominate a
ResNet-50 step through the cuDNN frontend's Python graph API (the ``nvidia-cudnn-frontend``
package, imported as ``cudnn``) instead:

- ``Convolution2DFunction.forward_gpu``: convolution forward (cuDNN's fprop);
- ``Deconvolution2DFunction.forward_gpu``: the gradient w.r.t. the input, which chainer
  computes as a deconvolution (cuDNN's dgrad);
- ``Convolution2DGradW.forward_gpu``: the gradient w.r.t. the weights (cuDNN's wgrad);
- ``BatchNormalization``: forward in training and its backward, through an
  implementation object handed to chainer's ``impl_selector``;
- ``FixedBatchNormalization.forward``: forward in inference.

chainer has no hook to swap a function's GPU implementation, so ``install`` replaces those
methods on the classes, in this one place, as ``compat`` applies its shims; chainer's own
methods stay in ``CHAINER_METHODS`` and run every case this path declines (and all of them
after ``uninstall``).

A graph is built once per case (``case_key``: operation, shapes, strides, dtypes, layout,
compute type, TF32 and determinism) and cached; a case cuDNN declines is cached too, and
then runs chainer's own method. Workspaces come from CuPy's memory pool, and graphs run on
CuPy's current stream. chainer hands over NCHW (its standard layout), and that is what the
graphs describe. Semantics are chainer's: ``pad``/``stride``/``dilate``/``groups`` as in
``F.convolution_2d`` (``cover_all`` is declined), output sizes from
``chainer.utils.conv.get_conv_outsize``, and BatchNorm's running statistics updated with
its ``decay`` and the unbiased variance m / (m - 1) (``update_running_stats``).
"""
import collections
import os
import time

import numpy

IMPLS = ('auto', 'cudnn', 'chainer')
"""Values of ``train.conv_bn``. 'auto' runs chainer's own path: the cuDNN path becomes
its choice only once a GPU run has shown that the two agree (scripts/cudnn_check.py)."""

LAYOUT = 'NCHW'
"""The layout chainer hands over and the graphs describe."""

INSTALL_HINT = ('pip install nvidia-cudnn-frontend (with nvidia-cudnn-cu12 or '
                'nvidia-cudnn-cu13 matching the CUDA of CuPy)')


CHAINER_HAS_CUDNN = 'CuPy < 14: chainer runs cuDNN through CuPy itself'


class Unavailable(RuntimeError):
    """``train.conv_bn=cudnn`` asked for a path this machine cannot run; the message says
    what to install or change."""


def load_frontend():
    """The cuDNN frontend module (``import cudnn``) with its cuDNN library loaded.

    Raises ``Unavailable`` naming what to install.
    """
    try:
        import cudnn as frontend
    except ImportError as e:
        raise Unavailable('train.conv_bn=cudnn needs NVIDIA\'s cuDNN frontend, which does not '
                          'import here ({}); {}, or use train.conv_bn=chainer'.format(
                              e, INSTALL_HINT))
    if not hasattr(frontend, 'pygraph'):
        raise Unavailable('train.conv_bn=cudnn: the module cudnn at {} is not NVIDIA\'s cuDNN '
                          'frontend (no pygraph); {}'.format(
                              getattr(frontend, '__file__', '?'), INSTALL_HINT))
    try:
        frontend.backend_version()
    except Exception as e:  # the shared library itself is missing or does not load
        raise Unavailable('train.conv_bn=cudnn: the cuDNN frontend imports but cuDNN does not '
                          'load ({}: {}); {}'.format(type(e).__name__, e, INSTALL_HINT))
    return frontend


def choose(setting, on_gpu, chainer_has_cudnn, frontend_loader=load_frontend):
    """``(impl, why)``: who runs Convolution2D and BatchNorm, 'cudnn' or 'chainer'.

    ``setting`` is ``train.conv_bn``; ``chainer_has_cudnn`` is
    ``chainer.backends.cuda.cudnn_enabled`` (CuPy < 14). ``frontend_loader`` is called only
    when the frontend is needed. Raises ``Unavailable`` for 'cudnn' on the CPU or where the
    frontend does not load, ``ValueError`` for a setting not in ``IMPLS``.
    """
    if setting not in IMPLS:
        raise ValueError('train.conv_bn must be one of {}, not {!r}'.format(
            ', '.join(IMPLS), setting))
    if not on_gpu:
        if setting == 'cudnn':  # asked for by name: saying nothing would hide a wrong device
            raise Unavailable('train.conv_bn=cudnn runs on GPUs, but this rank computes on the '
                              'CPU; use train.conv_bn=auto (or a GPU: device=auto)')
        return 'chainer', 'on the CPU'
    if chainer_has_cudnn:
        return 'chainer', CHAINER_HAS_CUDNN
    if setting == 'chainer':
        return 'chainer', 'train.conv_bn=chainer'
    if setting == 'auto':
        return 'chainer', ('train.conv_bn=auto keeps chainer\'s own path until a GPU run shows '
                           'the cuDNN path agrees')
    frontend_loader()
    return 'cudnn', 'train.conv_bn=cudnn'


def tf32_from_environment(environ=os.environ):
    """TF32 for float32 convolutions follows CuPy's own switch, ``CUPY_TF32=1`` (off by
    default), which also decides it for the cuBLAS GEMMs of chainer's path: both paths
    then compute float32 the same way."""
    return environ.get('CUPY_TF32', '0') == '1'


def conv_out_size(size, k, s, p, d):
    """Output extent of a convolution, as chainer computes it (``cover_all`` False)."""
    from chainer.utils import conv
    return conv.get_conv_outsize(size, k, s, p, cover_all=False, d=d)


def row_major_strides(shape):
    """Strides in elements of a C-contiguous array of ``shape``."""
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


def momentum_from_decay(decay):
    """cuDNN's exponential-average factor (weight of the new batch) for chainer's ``decay``
    (weight of the old running value): 1 - decay."""
    return 1.0 - decay


def update_running_stats(running_mean, running_var, mean, inv_std, eps, decay, m):
    """chainer's running-statistics update, in place, from cuDNN's saved statistics.

    ``mean`` and ``inv_std`` (shape (C,), float32) are the batch's mean and
    1 / sqrt(var + eps), which cuDNN saves; ``m`` is the number of values per channel
    (N x H x W). As chainer's ``BatchNormalization``: running_mean = decay x running_mean
    + (1 - decay) x mean, and running_var the same with the unbiased batch variance,
    var x m / (m - 1). The update is done here, not by cuDNN, so that its meaning is
    chainer's whatever cuDNN's convention for the running variance.
    """
    var = 1 / (inv_std * inv_std) - inv_std.dtype.type(eps)
    adjust = m / max(m - 1.0, 1.0)
    running_mean *= decay
    running_mean += (1 - decay) * mean
    running_var *= decay
    running_var += (1 - decay) * adjust * var


Graph = collections.namedtuple('Graph', 'graph tensors workspace_size')
"""A built graph, its tensors by role, and the workspace bytes it needs."""


CaseKey = collections.namedtuple(
    'CaseKey', 'op arrays dtype compute_type layout tf32 deterministic params')
"""What a built graph depends on; ``arrays`` holds (shape, strides in elements) each."""


def case_key(op, arrays, dtype, tf32, deterministic, **params):
    """The cache key of one case: the operation, each array's shape and strides (in
    elements), the data and compute types, the layout, TF32 and determinism, and the
    operation's parameters (pads, strides, ...)."""
    shapes = tuple((tuple(a.shape), tuple(s // a.itemsize for s in a.strides))
                   for a in arrays)
    compute = 'float32'
    return CaseKey(op, shapes, numpy.dtype(dtype).name, compute, LAYOUT,
                   bool(tf32) and numpy.dtype(dtype) == numpy.float32, bool(deterministic),
                   tuple(sorted(params.items())))


class Frontend:
    """Graphs of the cuDNN frontend, built once per case and cached, run on ``xp`` arrays.

    ``frontend`` is the ``cudnn`` module; ``xp`` the array module (CuPy; NumPy in tests
    with a stand-in frontend); ``stream`` returns the handle's stream (CuPy's current
    stream's pointer). ``tf32`` lets float32 convolutions use TF32 tensor cores.
    ``builds``, ``build_seconds`` and ``declined`` (key -> reason) say what happened.
    """

    def __init__(self, frontend, xp, tf32=False, stream=None):
        self.fe = frontend
        self.xp = xp
        self.tf32 = tf32
        self.stream = stream or (lambda: xp.cuda.get_current_stream().ptr)
        self.graphs = {}
        self.declined = {}
        self.builds = 0
        self.build_seconds = 0.0
        self._handles = {}

    def _data_type(self, dtype):
        return {numpy.dtype(numpy.float32): self.fe.data_type.FLOAT,
                numpy.dtype(numpy.float16): self.fe.data_type.HALF}[numpy.dtype(dtype)]

    def handle(self):
        device = self.xp.cuda.Device().id if hasattr(self.xp, 'cuda') else 0
        if device not in self._handles:
            self._handles[device] = self.fe.create_handle()
        handle = self._handles[device]
        self.fe.set_stream(handle, self.stream())
        return handle

    def describe_graph(self, dtype, describe, handle=None):
        """``(graph, tensors by role)``: a fresh graph of the frontend, ``dtype`` in and out
        and float32 inside, described by ``describe``. Describing needs neither cuDNN's
        library nor a GPU (tests/test_cudnn_frontend.py drives it on the CPU); validating
        and building the graph (``graph``) need both, and ``handle``."""
        fe = self.fe
        graph = fe.pygraph(io_data_type=self._data_type(dtype),
                           intermediate_data_type=fe.data_type.FLOAT,
                           compute_data_type=fe.data_type.FLOAT, handle=handle)
        return graph, describe(graph)

    def graph(self, key, dtype, describe):
        """The built graph of ``key``, or None when cuDNN declines it (remembered).

        ``describe(graph)`` adds the tensors and operations to a fresh graph and returns
        the tensors by role. Build errors that mean "not supported" decline the case;
        others propagate.
        """
        if key in self.declined:
            return None
        built = self.graphs.get(key)
        if built is not None:
            return built
        start = time.perf_counter()
        fe = self.fe
        try:
            graph, tensors = self.describe_graph(dtype, describe, handle=self.handle())
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([fe.heur_mode.A, fe.heur_mode.FALLBACK])
            notes = []
            if numpy.dtype(dtype) == numpy.float32 and not self.tf32:
                notes.append(fe.numerical_note.TENSOR_CORE)  # the TF32 engines
            if key.deterministic:  # chainer.config.cudnn_deterministic
                notes.append(fe.numerical_note.NONDETERMINISTIC)
            if notes:
                graph.deselect_numeric_notes(notes)
            graph.check_support()
            graph.build_plans()
            built = Graph(graph, tensors, graph.get_workspace_size())
        except (fe.cudnnGraphNotSupportedError, RuntimeError, ValueError) as e:
            self.declined[key] = '{}: {}'.format(type(e).__name__, str(e).splitlines()[0]
                                                 if str(e) else '')
            return None
        self.graphs[key] = built
        self.builds += 1
        self.build_seconds += time.perf_counter() - start
        return built

    def run(self, built, arrays):
        """Execute ``built`` with ``arrays`` (role -> array), a workspace from the pool."""
        pack = {built.tensors[role]: array for role, array in arrays.items()}
        workspace = self.xp.empty(max(built.workspace_size, 1), dtype=numpy.uint8)
        built.graph.execute(pack, workspace, handle=self.handle())

    def _tensor(self, graph, name, array):
        return graph.tensor(name=name, dim=list(array.shape),
                            stride=[s // array.itemsize for s in array.strides],
                            data_type=self._data_type(array.dtype))

    def contiguous(self, array):
        """The array as the graphs see it: C-contiguous, chainer's NCHW (a no-op for what
        chainer hands over). scripts/cudnn_check.py keeps other strides to time NHWC."""
        return self.xp.ascontiguousarray(array)

    @staticmethod
    def _output(tensor, shape, dtype_code, like=None):
        # ``like``: an array whose strides the output has (else row-major).
        strides = (row_major_strides(shape) if like is None
                   else [s // like.itemsize for s in like.strides])
        tensor.set_output(True).set_dim(list(shape)).set_stride(list(strides)).set_data_type(
            dtype_code)
        return tensor

    def _conv_ok(self, x, W, layouts, cover_all):
        return (not cover_all and x.dtype == W.dtype and x.ndim == 4 and W.ndim == 4
                and numpy.dtype(x.dtype) in (numpy.float32, numpy.float16)
                and all(layout is None for layout in layouts))

    def convolution_forward(self, x, W, conv):
        """y of ``F.convolution_2d(x, W)`` (no bias) with ``conv``'s sy, sx, ph, pw, dy, dx
        and groups: x (N, C, H, W), W (K, C / groups, kh, kw), same float dtype; y (N, K,
        out_h, out_w) with chainer's output sizes. None when declined."""
        n, _, h, w = x.shape
        k, _, kh, kw = W.shape
        out_shape = (n, k, conv_out_size(h, kh, conv.sy, conv.ph, conv.dy),
                     conv_out_size(w, kw, conv.sx, conv.pw, conv.dx))
        if min(out_shape) <= 0:
            return None
        xp = self.xp
        x, W = self.contiguous(x), self.contiguous(W)
        params = _conv_params(conv)
        key = case_key('conv_fprop', (x, W), x.dtype, self.tf32, _deterministic(), **params)

        def describe(graph):
            tx, tw = self._tensor(graph, 'x', x), self._tensor(graph, 'W', W)
            ty = graph.conv_fprop(image=tx, weight=tw, compute_data_type=self.fe.data_type.FLOAT,
                                  name='conv_fprop', **_fe_conv_params(conv))
            ty = self._output(ty, out_shape, self._data_type(x.dtype))
            return {'x': tx, 'W': tw, 'y': ty}
        built = self.graph(key, x.dtype, describe)
        if built is None:
            return None
        y = xp.empty(out_shape, dtype=x.dtype)
        self.run(built, {'x': x, 'W': W, 'y': y})
        return y

    def convolution_grad_input(self, gy, W, conv, out_hw):
        """gx of a convolution (chainer's ``F.deconvolution_2d(gy, W)`` with ``outsize``
        ``out_hw``): gy (N, K, oh, ow), W (K, C / groups, kh, kw); gx (N, C, H, W). None
        when declined."""
        n, k, oh, ow = gy.shape
        _, cg, kh, kw = W.shape
        out_shape = (n, cg * conv.groups) + tuple(out_hw)
        if (conv_out_size(out_hw[0], kh, conv.sy, conv.ph, conv.dy) != oh
                or conv_out_size(out_hw[1], kw, conv.sx, conv.pw, conv.dx) != ow):
            return None  # chainer's cover_all case
        xp = self.xp
        gy, W = self.contiguous(gy), self.contiguous(W)
        key = case_key('conv_dgrad', (gy, W), gy.dtype, self.tf32, _deterministic(),
                       out=tuple(out_shape), **_conv_params(conv))

        def describe(graph):
            tgy, tw = self._tensor(graph, 'gy', gy), self._tensor(graph, 'W', W)
            tgx = graph.conv_dgrad(loss=tgy, filter=tw, compute_data_type=self.fe.data_type.FLOAT,
                                   name='conv_dgrad', **_fe_conv_params(conv))
            tgx = self._output(tgx, out_shape, self._data_type(gy.dtype))
            return {'gy': tgy, 'W': tw, 'gx': tgx}
        built = self.graph(key, gy.dtype, describe)
        if built is None:
            return None
        gx = xp.empty(out_shape, dtype=gy.dtype)
        self.run(built, {'gy': gy, 'W': W, 'gx': gx})
        return gx

    def convolution_grad_weight(self, x, gy, conv, w_shape):
        """gW (``w_shape`` = (K, C / groups, kh, kw)) of a convolution of x (N, C, H, W)
        with output gradient gy (N, K, oh, ow). None when declined."""
        xp = self.xp
        x, gy = self.contiguous(x), self.contiguous(gy)
        key = case_key('conv_wgrad', (x, gy), x.dtype, self.tf32, _deterministic(),
                       w=tuple(w_shape), **_conv_params(conv))

        def describe(graph):
            tx, tgy = self._tensor(graph, 'x', x), self._tensor(graph, 'gy', gy)
            tgw = graph.conv_wgrad(image=tx, loss=tgy, compute_data_type=self.fe.data_type.FLOAT,
                                   name='conv_wgrad', **_fe_conv_params(conv))
            tgw = self._output(tgw, w_shape, self._data_type(x.dtype))
            return {'x': tx, 'gy': tgy, 'gW': tgw}
        built = self.graph(key, x.dtype, describe)
        if built is None:
            return None
        gW = xp.empty(w_shape, dtype=x.dtype)
        self.run(built, {'x': x, 'gy': gy, 'gW': gW})
        return gW

    def _bn_ok(self, x, gamma):
        return (x.ndim == 4 and gamma.ndim == 1 and x.shape[1] == gamma.shape[0]
                and numpy.dtype(gamma.dtype) == numpy.float32
                and numpy.dtype(x.dtype) in (numpy.float32, numpy.float16))

    def _scalar(self, graph, name):
        return graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1],
                            data_type=self.fe.data_type.FLOAT, is_pass_by_value=True)

    def _channel(self, graph, name, c):
        return graph.tensor(name=name, dim=[1, c, 1, 1], stride=[c, 1, 1, 1],
                            data_type=self.fe.data_type.FLOAT)

    def batch_norm_forward(self, x, gamma, beta, eps):
        """``(y, mean, inv_std)`` of BatchNorm in training over N, H and W: x (N, C, H, W)
        float32 or float16, gamma and beta (C,) float32; y like x, mean and inv_std (C,)
        float32 (the batch mean and 1 / sqrt(var + eps), biased var). None when declined."""
        if not self._bn_ok(x, gamma):
            return None
        xp = self.xp
        x = self.contiguous(x)
        c = x.shape[1]
        key = case_key('batchnorm', (x, gamma), x.dtype, self.tf32, False)

        def describe(graph):
            fe = self.fe
            t = {'x': self._tensor(graph, 'x', x), 'gamma': self._channel(graph, 'gamma', c),
                 'beta': self._channel(graph, 'beta', c), 'eps': self._scalar(graph, 'eps')}
            # No running statistics in the graph: update_running_stats keeps chainer's.
            y, mean, inv_std = graph.batchnorm(
                input=t['x'], scale=t['gamma'], bias=t['beta'], epsilon=t['eps'],
                name='batchnorm')[:3]
            t['y'] = self._output(y, x.shape, self._data_type(x.dtype), like=x)
            t['mean'] = self._output(mean, (1, c, 1, 1), fe.data_type.FLOAT)
            t['inv_std'] = self._output(inv_std, (1, c, 1, 1), fe.data_type.FLOAT)
            return t
        built = self.graph(key, x.dtype, describe)
        if built is None:
            return None
        y = xp.empty_like(x)
        mean, inv_std = (xp.empty((1, c, 1, 1), dtype=numpy.float32) for _ in range(2))
        self.run(built, {'x': x, 'gamma': _as_channel(gamma), 'beta': _as_channel(beta),
                         'y': y, 'mean': mean, 'inv_std': inv_std,
                         'eps': numpy.full((1, 1, 1, 1), eps, numpy.float32)})
        return y, mean.reshape(c), inv_std.reshape(c)

    def batch_norm_inference(self, x, gamma, beta, mean, var, eps):
        """y of BatchNorm in inference with the running ``mean`` and ``var`` (C,), float32:
        gamma x (x - mean) / sqrt(var + eps) + beta. None when declined."""
        if not self._bn_ok(x, gamma) or mean.dtype != numpy.float32:
            return None
        xp = self.xp
        x = self.contiguous(x)
        c = x.shape[1]
        key = case_key('batchnorm_inference', (x, gamma), x.dtype, self.tf32, False)

        def describe(graph):
            t = {'x': self._tensor(graph, 'x', x)}
            for name in ('gamma', 'beta', 'mean', 'inv_std'):
                t[name] = self._channel(graph, name, c)
            y = graph.batchnorm_inference(input=t['x'], mean=t['mean'], inv_variance=t['inv_std'],
                                          scale=t['gamma'], bias=t['beta'],
                                          name='batchnorm_inference')
            t['y'] = self._output(y, x.shape, self._data_type(x.dtype), like=x)
            return t
        built = self.graph(key, x.dtype, describe)
        if built is None:
            return None
        y = xp.empty_like(x)
        inv_std = (1 / xp.sqrt(var + numpy.float32(eps))).astype(numpy.float32, copy=False)
        self.run(built, {'x': x, 'gamma': _as_channel(gamma), 'beta': _as_channel(beta),
                         'mean': _as_channel(mean), 'inv_std': _as_channel(inv_std), 'y': y})
        return y

    def batch_norm_backward(self, x, gamma, gy, mean, inv_std):
        """``(gx, ggamma, gbeta)`` of BatchNorm in training, from the forward's saved
        ``mean`` and ``inv_std``: gx like x, ggamma and gbeta (C,) float32. None when
        declined."""
        if not self._bn_ok(x, gamma) or gy.dtype != x.dtype or gy.shape != x.shape:
            return None
        xp = self.xp
        x, gy = self.contiguous(x), self.contiguous(gy)
        c = x.shape[1]
        key = case_key('batchnorm_backward', (x, gy, gamma), x.dtype, self.tf32, False)

        def describe(graph):
            fe = self.fe
            t = {'x': self._tensor(graph, 'x', x), 'gy': self._tensor(graph, 'gy', gy)}
            for name in ('gamma', 'mean', 'inv_std'):
                t[name] = self._channel(graph, name, c)
            gx, ggamma, gbeta = graph.batchnorm_backward(
                grad=t['gy'], input=t['x'], scale=t['gamma'], mean=t['mean'],
                inv_variance=t['inv_std'], name='batchnorm_backward')
            t['gx'] = self._output(gx, x.shape, self._data_type(x.dtype), like=x)
            t['ggamma'] = self._output(ggamma, (1, c, 1, 1), fe.data_type.FLOAT)
            t['gbeta'] = self._output(gbeta, (1, c, 1, 1), fe.data_type.FLOAT)
            return t
        built = self.graph(key, x.dtype, describe)
        if built is None:
            return None
        gx = xp.empty_like(x)
        ggamma, gbeta = (xp.empty((1, c, 1, 1), dtype=numpy.float32) for _ in range(2))
        self.run(built, {'x': x, 'gy': gy, 'gamma': _as_channel(gamma),
                         'mean': _as_channel(mean), 'inv_std': _as_channel(inv_std),
                         'gx': gx, 'ggamma': ggamma, 'gbeta': gbeta})
        return gx, ggamma.reshape(c), gbeta.reshape(c)


def _as_channel(array):
    # Per-channel values (C,) as the (1, C, 1, 1) tensors the graphs describe.
    return array.reshape(1, -1, 1, 1)


def _deterministic():
    import chainer
    return bool(chainer.config.cudnn_deterministic)


def _conv_params(conv):
    return {'stride': (conv.sy, conv.sx), 'pad': (conv.ph, conv.pw),
            'dilate': (conv.dy, conv.dx), 'groups': conv.groups}


def _fe_conv_params(conv):
    # The frontend infers the groups from the channels of the image and the filter.
    return {'padding': [conv.ph, conv.pw], 'stride': [conv.sy, conv.sx],
            'dilation': [conv.dy, conv.dx]}


# What runs now: set by ``setup`` (or ``install``), read by ``describe``.
_ACTIVE = None
_CHOICE = ('chainer', 'not set up')
CHAINER_METHODS = {}
"""chainer's own methods replaced by ``install``: (class, name) -> function."""


def _classes():
    from chainer.functions.connection import convolution_2d, deconvolution_2d
    from chainer.functions.normalization import batch_normalization as bn
    return convolution_2d, deconvolution_2d, bn


def _chainer(cls, name):
    return CHAINER_METHODS.get((cls, name)) or cls.__dict__[name]


def _active_for(array):
    # chainer.config.use_cudnn='never' is chainer's own switch for cuDNN; it is kept.
    import chainer
    if _ACTIVE is None or chainer.config.use_cudnn == 'never':
        return None
    return _ACTIVE if isinstance(array, _ACTIVE.xp.ndarray) else None


def _conv_forward_gpu(self, inputs):
    convolution_2d = _classes()[0]
    x, W = inputs[:2]
    active = _active_for(x)
    y = None
    if active is not None and active._conv_ok(x, W, self.input_layouts, self.cover_all):
        y = active.convolution_forward(x, W, self)
    if y is None:
        return _chainer(convolution_2d.Convolution2DFunction, 'forward_gpu')(self, inputs)
    self.retain_inputs((0, 1))
    if len(inputs) == 3:
        y += inputs[2].reshape(1, -1, 1, 1)
    return y,


def _deconv_forward_gpu(self, inputs):
    # chainer computes a convolution's gradient w.r.t. its input as this deconvolution.
    deconvolution_2d = _classes()[1]
    x, W = inputs[:2]
    active = _active_for(x)
    gx = None
    if active is not None and active._conv_ok(x, W, self.input_layouts, False):
        self._calc_out_size(x.shape, W.shape)
        self._set_cover_all(x.shape, W.shape)
        if not self.cover_all:
            gx = active.convolution_grad_input(x, W, self, (self.outh, self.outw))
    if gx is None:
        return _chainer(deconvolution_2d.Deconvolution2DFunction, 'forward_gpu')(self, inputs)
    self.retain_inputs((0, 1))
    if len(inputs) == 3:
        gx += inputs[2].reshape(1, -1, 1, 1)
    return gx,


def _conv_grad_w_forward_gpu(self, inputs):
    convolution_2d = _classes()[0]
    x, gy = inputs
    active = _active_for(x)
    gW = None
    if (active is not None and x.dtype == gy.dtype == self.W_dtype and self.w_layout is None
            and active._conv_ok(x, gy, self.input_layouts, self.cover_all)):
        gW = active.convolution_grad_weight(x, gy, self, self.W_shape)
    if gW is None:
        return _chainer(convolution_2d.Convolution2DGradW, 'forward_gpu')(self, inputs)
    self.retain_inputs((0, 1))
    return gW,


def _batch_norm_impl_class():
    bn = _classes()[2]

    class FrontendBatchNormImpl(bn._BatchNormalizationImpl):
        """chainer's BatchNormalization implementation interface over ``Frontend``; a
        case the frontend declines runs ``fallback`` (chainer's own), backward too."""

        def __init__(self, frontend, fallback):
            self.frontend = frontend
            self.fallback = fallback
            self.declined = False

        def forward(self, axis, gamma, x, x_layout, xp, expander, beta, eps, decay,
                    running_mean, running_var):
            out = (self.frontend.batch_norm_forward(x, gamma, beta, eps)
                   if x_layout is None else None)
            if out is None:
                self.declined = True
                return self.fallback.forward(axis, gamma, x, x_layout, xp, expander, beta, eps,
                                             decay, running_mean, running_var)
            y, mean, inv_std = out
            if running_mean is not None:
                update_running_stats(running_mean, running_var, mean, inv_std, eps, decay,
                                     x.size // gamma.size)
            # chainer's BatchNormalizationGrad needs mean and inv_std; var only for iDeep.
            return y, x_layout, running_mean, running_var, mean, None, inv_std, None

        def backward(self, axis, gamma, gy, x, x_layout, xp, expander, mean, inv_std, eps,
                     var, forward_data):
            out = (None if self.declined else
                   self.frontend.batch_norm_backward(x, gamma, gy, mean, inv_std))
            if out is None:
                return self.fallback.backward(axis, gamma, gy, x, x_layout, xp, expander, mean,
                                              inv_std, eps, var, forward_data)
            gx, ggamma, gbeta = out
            return gx, x_layout, ggamma, gbeta
    return FrontendBatchNormImpl


def select_batch_norm_impl(func, inputs):
    """chainer's ``impl_selector`` for ``BatchNormalization``: the frontend's for per-channel
    BatchNorm of 4-d arrays in chainer's standard layout, chainer's own otherwise."""
    bn = _classes()[2]
    chainer_impl = bn._impl_selector(func, inputs)
    x, gamma, _ = inputs
    active = _active_for(x)
    if (active is None or tuple(func.key_axis) != (1,) or x.ndim != 4
            or any(layout is not None for layout in func.input_layouts)):
        return chainer_impl
    return _batch_norm_impl_class()(active, chainer_impl)


def _bn_forward(self, inputs):
    bn = _classes()[2]
    if self._impl_selector is bn._impl_selector:  # the default, not one a caller chose
        self._impl_selector = select_batch_norm_impl
    return _chainer(bn.BatchNormalization, 'forward')(self, inputs)


def _fixed_bn_forward(self, inputs):
    bn = _classes()[2]
    x, gamma, beta, mean, var = inputs
    active = _active_for(x)
    axis = bn._compute_axis(x.ndim, gamma.ndim, self.axis)
    y = None
    if active is not None and tuple(axis) == (0, 2, 3):
        y = active.batch_norm_inference(x, gamma, beta, mean, var, self.eps)
    if y is None:
        return _chainer(bn.FixedBatchNormalization, 'forward')(self, inputs)
    # What chainer's forward leaves for its backward; inv_std and inv_var None: its
    # FixedBatchNormalizationGrad computes them when they are needed.
    self.retain_inputs((0, 1, 3, 4))
    self.axis, self.key_axis = axis, (1,)
    self.expander = (None, slice(None), None, None)
    self.inv_std = self.inv_var = None
    return y,


def _targets():
    convolution_2d, deconvolution_2d, bn = _classes()
    return {(convolution_2d.Convolution2DFunction, 'forward_gpu'): _conv_forward_gpu,
            (deconvolution_2d.Deconvolution2DFunction, 'forward_gpu'): _deconv_forward_gpu,
            (convolution_2d.Convolution2DGradW, 'forward_gpu'): _conv_grad_w_forward_gpu,
            (bn.BatchNormalization, 'forward'): _bn_forward,
            (bn.FixedBatchNormalization, 'forward'): _fixed_bn_forward}


def install(frontend):
    """Run chainer's Convolution2D and BatchNorm on GPUs through ``frontend`` (a
    ``Frontend``). This is the one place that replaces chainer's methods: the GPU methods
    of ``Convolution2DFunction``, ``Deconvolution2DFunction`` and ``Convolution2DGradW``,
    and the ``forward`` of ``BatchNormalization`` (to choose its implementation) and of
    ``FixedBatchNormalization``. chainer's own stay in ``CHAINER_METHODS`` and run what the
    frontend declines. Installing again only changes the frontend."""
    global _ACTIVE
    for (cls, name), method in _targets().items():
        CHAINER_METHODS.setdefault((cls, name), cls.__dict__[name])
        setattr(cls, name, method)
    _ACTIVE = frontend


def uninstall():
    """Put chainer's own methods back."""
    global _ACTIVE
    for (cls, name), method in list(CHAINER_METHODS.items()):
        setattr(cls, name, method)
        del CHAINER_METHODS[(cls, name)]
    _ACTIVE = None


def setup(setting, on_gpu):
    """Decide who runs Convolution2D and BatchNorm (``choose``) and install the cuDNN path
    when it is chosen. Returns 'cudnn' or 'chainer'. Raises ``Unavailable`` as ``choose``.
    Called once per process by the runtime, after the device is chosen."""
    global _CHOICE
    from chainer.backends import cuda
    impl, why = choose(setting, on_gpu, cuda.cudnn_enabled)
    if impl == 'cudnn':
        install(Frontend(load_frontend(), cuda.cupy, tf32=tf32_from_environment()))
    _CHOICE = (impl, why)
    return impl


def describe():
    """One line for the runtime log: who runs Convolution2D and BatchNorm, and how."""
    impl, why = _CHOICE
    if impl == 'cudnn' and _ACTIVE is not None:
        fe = _ACTIVE.fe
        return ('convolutions and BatchNorm: cuDNN {} through the cuDNN frontend {} ({}), {}, '
                'float32 with TF32 {} (CUPY_TF32), graphs cached per shape'.format(
                    fe.backend_version(), getattr(fe, '__version__', '?'), why, LAYOUT,
                    'on' if _ACTIVE.tf32 else 'off'))
    if why == CHAINER_HAS_CUDNN:
        return 'convolutions and BatchNorm: chainer\'s own path ({})'.format(why)
    return ('convolutions and BatchNorm: chainer\'s own CuPy kernels (im2col + cuBLAS, '
            'separate reductions) ({})'.format(why))


def summary():
    """Graphs built, their build time and the cases declined (to chainer's path)."""
    if _ACTIVE is None:
        return ''
    return 'cuDNN graphs: {} built in {:.2f} s, {} case(s) declined to chainer\'s path'.format(
        _ACTIVE.builds, _ACTIVE.build_seconds, len(_ACTIVE.declined))
