"""cuDNN frontend graphs of Convolution2D (forward, both gradients) and BatchNormalization
(training, inference, backward), built once per case, cached and run on CuPy arrays, with
chainer's semantics (see ``distributed.cudnn``)."""
import collections
import time

import numpy

LAYOUT = 'NCHW'
"""The layout chainer hands over and the graphs describe."""


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
        library nor a GPU (tests/distributed/test_cudnn_frontend.py drives it on the CPU);
        validating and building the graph (``graph``) need both, and ``handle``."""
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
            self.declined[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
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
