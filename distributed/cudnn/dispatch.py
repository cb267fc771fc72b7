"""Which path runs chainer's Convolution2D and BatchNormalization (``train.conv_bn``), and
the cuDNN path's methods installed on chainer's classes (``install``; chainer's own kept in
``CHAINER_METHODS``). The graphs themselves: ``graphs``."""
import os

from distributed.cudnn.graphs import LAYOUT, Frontend, update_running_stats

IMPLS = ('auto', 'cudnn', 'chainer')
"""Values of ``train.conv_bn``. 'auto' runs chainer's own path: the cuDNN path becomes
its choice only once a GPU run has shown that the two agree (scripts/cudnn_check.py)."""


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
        raise ValueError(f"train.conv_bn must be one of {', '.join(IMPLS)}, not {setting!r}")
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
        return f'convolutions and BatchNorm: chainer\'s own path ({why})'
    return ('convolutions and BatchNorm: chainer\'s own CuPy kernels (im2col + cuBLAS, '
            'separate reductions) ({})'.format(why))


def summary():
    """Graphs built, their build time and the cases declined (to chainer's path)."""
    if _ACTIVE is None:
        return ''
    return 'cuDNN graphs: {} built in {:.2f} s, {} case(s) declined to chainer\'s path'.format(
        _ACTIVE.builds, _ACTIVE.build_seconds, len(_ACTIVE.declined))
