"""A stand-in for NVIDIA's cuDNN frontend module (``import cudnn``), for tests without a GPU.

It records the graphs built through it (tensors with their dims, strides and data types,
operations with their parameters, the numeric notes deselected) and executes them with
NumPy, each operation computed from its definition in cuDNN's documentation (NCHW, the
filter K x C/groups x kh x kw, symmetric padding), independently of chainer's code.
``decline`` decides which graphs ``check_support`` refuses.
"""
import enum
import types

import numpy


class data_type(enum.Enum):
    FLOAT = numpy.float32
    HALF = numpy.float16


heur_mode = enum.Enum('heur_mode', 'A B FALLBACK')
numerical_note = enum.Enum('numerical_note', 'TENSOR_CORE NONDETERMINISTIC')


class cudnnGraphNotSupportedError(RuntimeError):
    pass


class Tensor:
    def __init__(self, name, dim=None, stride=None, data_type=None, is_pass_by_value=False):
        self.name, self.dim, self.stride = name, dim, stride
        self.data_type, self.is_pass_by_value, self.output = data_type, is_pass_by_value, False

    def set_output(self, value):
        self.output = value
        return self

    def set_dim(self, dim):
        self.dim = list(dim)
        return self

    def set_stride(self, stride):
        self.stride = list(stride)
        return self

    def set_data_type(self, value):
        self.data_type = value
        return self


class Graph:
    def __init__(self, module, **properties):
        self.module, self.properties = module, properties
        self.tensors, self.ops, self.deselected, self.steps = [], [], [], []
        module.graphs.append(self)

    def tensor(self, name, dim, stride, data_type, is_pass_by_value=False):
        t = Tensor(name, list(dim), list(stride), data_type, is_pass_by_value)
        self.tensors.append(t)
        return t

    def _op(self, kind, outputs, **params):
        made = [Tensor('{}::{}'.format(kind, i)) for i in range(outputs)]
        self.tensors += made
        self.ops.append((kind, params, made))
        return made[0] if outputs == 1 else made

    def conv_fprop(self, image, weight, padding, stride, dilation, compute_data_type, name):
        return self._op('conv_fprop', 1, x=image, w=weight, padding=padding, stride=stride,
                        dilation=dilation)

    def conv_dgrad(self, loss, filter, padding, stride, dilation, compute_data_type, name):
        # Its output's dims are set by the caller on the tensor (cuDNN cannot infer them).
        dx = self._op('conv_dgrad', 1, dy=loss, w=filter, padding=padding, stride=stride,
                      dilation=dilation)
        self.ops[-1][1]['out_tensor'] = dx
        return dx

    def conv_wgrad(self, image, loss, padding, stride, dilation, compute_data_type, name):
        dw = self._op('conv_wgrad', 1, x=image, dy=loss, padding=padding, stride=stride,
                      dilation=dilation)
        self.ops[-1][1]['out_tensor'] = dw
        return dw

    def batchnorm(self, input, scale, bias, epsilon, name):
        return self._op('batchnorm', 3, x=input, scale=scale, bias=bias, eps=epsilon)

    def batchnorm_inference(self, input, mean, inv_variance, scale, bias, name):
        return self._op('batchnorm_inference', 1, x=input, mean=mean, inv_std=inv_variance,
                        scale=scale, bias=bias)

    def batchnorm_backward(self, grad, input, scale, mean, inv_variance, name):
        return self._op('batchnorm_backward', 3, dy=grad, x=input, scale=scale, mean=mean,
                        inv_std=inv_variance)

    def validate(self):
        self.steps.append('validate')

    def build_operation_graph(self):
        self.steps.append('build_operation_graph')

    def create_execution_plans(self, modes):
        self.steps.append('create_execution_plans')

    def deselect_numeric_notes(self, notes):
        self.deselected += list(notes)

    def check_support(self):
        if self.module.decline(self):
            raise cudnnGraphNotSupportedError('no engine supports this graph')

    def build_plans(self):
        self.steps.append('build_plans')

    def get_workspace_size(self):
        return 256

    def execute(self, pack, workspace, handle=None):
        for tensor, array in pack.items():
            if tensor.is_pass_by_value:
                continue
            strides = [s // array.itemsize for s in array.strides]
            if list(array.shape) != tensor.dim or strides != tensor.stride:
                raise ValueError('{}: array {} strides {} for a tensor {} strides {}'.format(
                    tensor.name, array.shape, strides, tensor.dim, tensor.stride))
            if numpy.dtype(array.dtype) != numpy.dtype(tensor.data_type.value):
                raise ValueError('{}: {} array for a {} tensor'.format(
                    tensor.name, array.dtype, tensor.data_type))
        value = {t: numpy.asarray(a, numpy.float64) for t, a in pack.items() if not t.output}
        for kind, params, outputs in self.ops:
            results = RUN[kind](value, **params)
            for t, result in zip(outputs, results):
                pack[t][...] = result.reshape(pack[t].shape)
        self.module.executions += 1


def _windows(padded, i, j, dil, stride, out_hw):
    return padded[:, :, i * dil[0]: i * dil[0] + stride[0] * (out_hw[0] - 1) + 1: stride[0],
                  j * dil[1]: j * dil[1] + stride[1] * (out_hw[1] - 1) + 1: stride[1]]


def _groups(x_channels, w):
    return x_channels // w.shape[1]


def _fprop(v, x, w, padding, stride, dilation):
    x, w = v[x], v[w]
    k, cg, kh, kw = w.shape
    g = _groups(x.shape[1], w)
    p = numpy.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out_hw = [(p.shape[2 + a] - dilation[a] * ((kh, kw)[a] - 1) - 1) // stride[a] + 1
              for a in (0, 1)]
    y = numpy.zeros((x.shape[0], k) + tuple(out_hw))
    kg = k // g
    for group in range(g):
        for i in range(kh):
            for j in range(kw):
                patch = _windows(p[:, group * cg:(group + 1) * cg], i, j, dilation, stride,
                                 out_hw)
                y[:, group * kg:(group + 1) * kg] += numpy.einsum(
                    'nchw,kc->nkhw', patch, w[group * kg:(group + 1) * kg, :, i, j])
    return y,


def _dgrad(v, dy, w, padding, stride, dilation, out):
    dy, w = v[dy], v[w]
    k, cg, kh, kw = w.shape
    n, c, h, wd = out
    g = c // cg
    kg = k // g
    padded = numpy.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]))
    out_hw = dy.shape[2:]
    for group in range(g):
        for i in range(kh):
            for j in range(kw):
                _windows(padded[:, group * cg:(group + 1) * cg], i, j, dilation, stride,
                         out_hw)[...] += numpy.einsum(
                    'nkhw,kc->nchw', dy[:, group * kg:(group + 1) * kg],
                    w[group * kg:(group + 1) * kg, :, i, j])
    return padded[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd],


def _wgrad(v, x, dy, padding, stride, dilation, out):
    x, dy = v[x], v[dy]
    k, cg, kh, kw = out
    g = x.shape[1] // cg
    kg = k // g
    p = numpy.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    dw = numpy.zeros(out)
    for group in range(g):
        for i in range(kh):
            for j in range(kw):
                patch = _windows(p[:, group * cg:(group + 1) * cg], i, j, dilation, stride,
                                 dy.shape[2:])
                dw[group * kg:(group + 1) * kg, :, i, j] = numpy.einsum(
                    'nkhw,nchw->kc', dy[:, group * kg:(group + 1) * kg], patch)
    return dw,


def _channel(a):
    return a.reshape(1, -1, 1, 1)


def _bn(v, x, scale, bias, eps):
    x = v[x]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    inv_std = 1 / numpy.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + v[eps].item())
    return _channel(v[scale]) * (x - mean) * inv_std + _channel(v[bias]), mean, inv_std


def _bn_inference(v, x, mean, inv_std, scale, bias):
    return (_channel(v[scale]) * (v[x] - _channel(v[mean])) * _channel(v[inv_std])
            + _channel(v[bias])),


def _bn_backward(v, dy, x, scale, mean, inv_std):
    dy, x = v[dy], v[x]
    x_hat = (x - _channel(v[mean])) * _channel(v[inv_std])
    m = x.size // x.shape[1]
    dbias = dy.sum(axis=(0, 2, 3))
    dscale = (dy * x_hat).sum(axis=(0, 2, 3))
    dx = _channel(v[scale] * v[inv_std]) * (
        dy - (x_hat * _channel(dscale) + _channel(dbias)) / m)
    return dx, dscale, dbias


RUN = {'conv_fprop': _fprop, 'batchnorm': _bn, 'batchnorm_inference': _bn_inference,
       'batchnorm_backward': _bn_backward}


def _dgrad_op(v, dy, w, padding, stride, dilation, out_tensor):
    return _dgrad(v, dy, w, padding, stride, dilation, tuple(out_tensor.dim))


def _wgrad_op(v, x, dy, padding, stride, dilation, out_tensor):
    return _wgrad(v, x, dy, padding, stride, dilation, tuple(out_tensor.dim))


RUN['conv_dgrad'] = _dgrad_op
RUN['conv_wgrad'] = _wgrad_op


def make(decline=lambda graph: False):
    """A fresh stand-in module; ``module.graphs`` lists the graphs made through it."""
    module = types.SimpleNamespace(
        data_type=data_type, heur_mode=heur_mode, numerical_note=numerical_note,
        cudnnGraphNotSupportedError=cudnnGraphNotSupportedError,
        backend_version=lambda: 91000, __version__='stand-in', graphs=[], executions=0,
        handles=[], streams=[], decline=decline)
    module.pygraph = lambda **properties: Graph(module, **properties)

    def create_handle():
        module.handles.append(object())
        return module.handles[-1]
    module.create_handle = create_handle
    module.set_stream = lambda handle, stream: module.streams.append(stream)
    return module
