"""The graphs of distributed/cudnn/graphs.py described through NVIDIA's real cuDNN frontend
(nvidia-cudnn-frontend 1.32.0) on a machine without cuDNN's library or a GPU.

tests/distributed/test_cudnn.py runs the path against a stand-in that accepts what the
product believes the frontend accepts; here the frontend's own Python graph builder judges
it. A ResNet-50 training step (the product's model, batch 1, 224 px) runs on the CPU through
chainer's own functions, recording every Convolution2D, gradient and BatchNorm node with its
inputs and the shapes chainer gives back; an inference forward adds FixedBatchNormalization.
Each node is then handed to the product's installed methods (float32) and to its
``Frontend`` operations (float16 in and out, float32 compute, as mixed16), which describe
their graphs with the real frontend through ``Frontend.describe_graph``. The tests assert
what the frontend infers (output dims and strides) against chainer's output sizes
(``chainer.utils.conv.get_conv_outsize``) and the shapes chainer's functions gave, what the
product declares, and the frontend's own checks of each graph.

Where the CPU stops (frontend 1.32.0, found by running each step here): describing a graph
(``pygraph``, ``tensor``, the operations, ``set_*``) and the first half of
``pygraph.validate`` (each node's shape inference and checks, each tensor's checks) are
Python and run here. The second half of ``validate`` lowers the graph to the C++ backend
graph (``_lower_to_cpp``), which first asks for a cuDNN handle
(``_backend_handle_for_lowering``: the caller's, device properties, or the current device's),
and every later step passes through that lowering: ``build_operation_graph``,
``create_execution_plans``, ``check_support``, ``build_plans``, then
``get_workspace_size`` and ``execute``. A handle and device properties need libcudnn
(``cudnnCreate``, ``cudnnGetVersion``), the default handle a GPU. ``GPU_ONLY`` lists those
steps; ``test_what_only_a_gpu_run_checks`` asserts each stops exactly there, so that a
frontend or environment that moves the line fails it instead of leaving a check unmade.
What lies past the line (the backend's own checks, e.g. whether the declared output dims
agree with the convolution, engine support, numerics) is scripts/cudnn_check.py's on a GPU.

`make cuda-check` runs this file with REQUIRE_CUDA_CHECK=1: there a missing frontend fails
instead of skipping. In the plain `make test` environment it skips with one line.
"""
import collections
import traceback

import numpy
import pytest

import distributed  # noqa: F401  (compat shims before chainer)
from prerequisites import require

FRONTEND_VERSION = '1.32.0'
"""The frontend whose graph builder these tests drive (requirements-cuda.txt); the line
they assert is drawn in its private functions, named in LINE."""
LINE = ('_lower_to_cpp', '_backend_handle_for_lowering')
"""Where the frontend's validation leaves Python: the lowering to the C++ backend graph, at
the cuDNN handle it is built with."""


def _why_not():
    """Why the tests cannot run here, or None."""
    try:
        import cudnn
    except ImportError as e:
        return 'NVIDIA\'s cuDNN frontend is not installed ({})'.format(e)
    version = getattr(cudnn, '__version__', '?')
    if not hasattr(cudnn, 'pygraph') or version != FRONTEND_VERSION:
        return ('the module cudnn at {} is not nvidia-cudnn-frontend {} (version {}), whose '
                'graph builder these tests drive'.format(
                    getattr(cudnn, '__file__', '?'), FRONTEND_VERSION, version))
    return None


require('cuDNN frontend checks', _why_not(), 'REQUIRE_CUDA_CHECK',  # make cuda-check
        '`make cuda-check` installs it')

import chainer  # noqa: E402
import cudnn as frontend_module  # noqa: E402  (only once it is known to be there)
from chainer.functions.connection import convolution_2d, deconvolution_2d  # noqa: E402
from chainer.functions.normalization import batch_normalization as bn  # noqa: E402
from chainer.utils.conv import get_conv_outsize  # noqa: E402

from distributed.cudnn import dispatch, graphs  # noqa: E402
from distributed.model import create_model  # noqa: E402

pytestmark = pytest.mark.cuda

OPS = {convolution_2d.Convolution2DFunction: 'conv_fprop',
       deconvolution_2d.Deconvolution2DFunction: 'conv_dgrad',
       convolution_2d.Convolution2DGradW: 'conv_wgrad',
       bn.BatchNormalization: 'batchnorm',
       bn.BatchNormalizationGrad: 'batchnorm_backward',
       bn.FixedBatchNormalization: 'batchnorm_inference'}
"""chainer's function nodes of a ResNet-50 step that the cuDNN path runs, by the frontend
operation describing them."""

GPU_ONLY = ('validate: the lowering to the C++ backend graph and its checks',
            'build_operation_graph', 'create_execution_plans', 'check_support', 'build_plans')
"""The steps of ``Frontend.graph`` after ``describe_graph`` that only a GPU run makes (then
``get_workspace_size`` and ``execute``, which need built plans)."""

Case = collections.namedtuple('Case', 'op node inputs outputs')
"""A recorded node: its operation, the node, its inputs' (shape, dtype), and the shapes of
the outputs chainer's own function gave."""

Described = collections.namedtuple('Described', 'key graph tensors inferred validation')
"""A graph the product described: its case key, the frontend's graph, its tensors by role,
the dims and strides the frontend inferred for each operation's outputs before the product
declared them, and how far the frontend's validation went ('python' or 'full')."""


class _Recorder(chainer.FunctionHook):
    """Records OPS' nodes with their inputs and the shapes of what chainer's forward
    returns (the node's ``forward`` is wrapped for the one call)."""
    name = 'cudnn_cases'

    def __init__(self):
        self.cases = []

    def forward_preprocess(self, function, in_data):
        op = OPS.get(type(function))
        if op is None:
            return
        forward = function.forward
        inputs = tuple((a.shape, a.dtype) for a in in_data)

        def recording(data):
            del function.forward  # the class's again, for the tests to call
            outputs = forward(data)
            self.cases.append(Case(op, function, inputs, tuple(y.shape for y in outputs)))
            return outputs
        function.forward = recording


class StopAtTheLine(Exception):
    """Raised by ``_Describing.graph`` once a graph is described and validated as far as
    this machine allows, so that the product's methods stop before building and running it."""

    def __init__(self, described):
        super().__init__(described.key.op)
        self.described = described


class _ObservedGraph:
    """The frontend's graph, recording the dims and strides its operations infer for their
    outputs at the moment they return them (the product then declares its own)."""

    def __init__(self, graph):
        self._graph = graph
        self.inferred = {}

    def __getattr__(self, name):
        attribute = getattr(self._graph, name)
        if name not in OPS.values():
            return attribute

        def operation(**kwargs):
            outputs = attribute(**kwargs)
            many = isinstance(outputs, (list, tuple))
            self.inferred[name] = [None if t is None else (list(t.get_dim()), list(t.get_stride()))
                                   for t in (outputs if many else [outputs])]
            return outputs
        return operation


class _ObservedFrontend:
    """The ``cudnn`` module, whose graphs are ``_ObservedGraph``."""

    def __getattr__(self, name):
        return getattr(frontend_module, name)

    def pygraph(self, **kwargs):
        return _ObservedGraph(frontend_module.pygraph(**kwargs))


def validate_to_the_line(graph):
    """'full' when the frontend validates ``graph`` here (cuDNN's library and a GPU are
    present), 'python' when its Python checks pass and it stops at LINE. Anything else the
    frontend raises (a refused argument, an inconsistent shape) propagates."""
    try:
        graph.validate()
    except Exception as e:
        frames = [frame.name for frame in traceback.extract_tb(e.__traceback__)]
        if not all(name in frames for name in LINE):
            raise
        return 'python'
    return 'full'


class _Describing(graphs.Frontend):
    """The product's ``Frontend`` over the real frontend, with NumPy arrays: ``graph``
    describes each case through the product's ``describe_graph`` (no handle), validates it
    up to the line, and stops the calling method with ``StopAtTheLine``."""

    def __init__(self, validate=True):
        super().__init__(_ObservedFrontend(), numpy, stream=lambda: 0)
        self.validate = validate

    def graph(self, key, dtype, describe):
        graph, tensors = self.describe_graph(dtype, describe)
        raise StopAtTheLine(Described(key, graph, tensors, graph.inferred,
                                      validate_to_the_line(graph) if self.validate else None))


def _empty(shape, dtype):
    # Untouched NumPy memory: describing reads shapes and strides only.
    return numpy.empty(shape, dtype)


Step = collections.namedtuple('Step', 'cases convolutions batch_norms')


@pytest.fixture(scope='module')
def step():
    """The nodes of one ResNet-50 training step and one inference forward (the product's
    model, batch 1, 224 px), recorded through chainer's own CPU functions, and the model's
    numbers of Convolution2D and BatchNormalization links."""
    model = create_model('resnet50', n_class=12)
    x = numpy.zeros((1, 3, 224, 224), numpy.float32)
    recorder = _Recorder()
    with recorder:
        loss = model(x, numpy.zeros(1, numpy.int32))
        loss.backward()
        with chainer.using_config('train', False):
            model.predictor(x)
    links = list(model.links())
    return Step(recorder.cases,
                sum(isinstance(link, chainer.links.Convolution2D) for link in links),
                sum(isinstance(link, chainer.links.BatchNormalization) for link in links))


def _described(call):
    with pytest.raises(StopAtTheLine) as stop:
        call()
    return stop.value.described


def _describe_float32(fe, case):
    """The graph the product's installed method describes for ``case``'s node (float32,
    as chainer hands it over)."""
    node = case.node
    inputs = tuple(_empty(shape, dtype) for shape, dtype in case.inputs)
    if case.op in ('conv_fprop', 'conv_dgrad', 'conv_wgrad'):
        return _described(lambda: node.forward_gpu(inputs))
    if case.op != 'batchnorm_backward':
        return _described(lambda: node.forward(inputs))
    # The cuDNN path's implementation in place of the one chainer's forward chose.
    chainers = node._impl
    node._impl = dispatch._batch_norm_impl_class()(fe, chainers)
    try:
        return _described(lambda: node.forward(inputs))
    finally:
        node._impl = chainers


def _describe_float16(fe, case):
    """The graph of ``case`` under mixed16: float16 activations, weights and gradients,
    BatchNorm's parameters and statistics float32; through the ``Frontend`` operations."""
    node, half = case.node, numpy.float16
    arrays = [_empty(shape, half if i == 0 or case.op.startswith('conv') else dtype)
              for i, (shape, dtype) in enumerate(case.inputs)]
    if case.op == 'conv_fprop':
        return _described(lambda: fe.convolution_forward(arrays[0], arrays[1], node))
    if case.op == 'conv_dgrad':
        return _described(lambda: fe.convolution_grad_input(
            arrays[0], arrays[1], node, case.outputs[0][2:]))
    if case.op == 'conv_wgrad':
        return _described(lambda: fe.convolution_grad_weight(
            arrays[0], arrays[1], node, case.outputs[0]))
    if case.op == 'batchnorm':
        return _described(lambda: fe.batch_norm_forward(arrays[0], arrays[1], arrays[2],
                                                        node.eps))
    if case.op == 'batchnorm_inference':
        return _described(lambda: fe.batch_norm_inference(*arrays, node.eps))
    x, gamma, gy = arrays[0], arrays[1], _empty(case.inputs[2][0], half)
    c = gamma.shape[0]
    return _described(lambda: fe.batch_norm_backward(
        x, gamma, gy, _empty(c, numpy.float32), _empty(c, numpy.float32)))


def _row_major(shape):
    return list(graphs.row_major_strides(shape))


def _check_tensor(described, role, shape, dtype):
    tensor = described.tensors[role]
    assert (list(tensor.get_dim()), list(tensor.get_stride())) == (
        list(shape), _row_major(shape)), (described.key.op, role)
    assert tensor.get_data_type() == {numpy.float32: frontend_module.data_type.FLOAT,
                                      numpy.float16: frontend_module.data_type.HALF}[dtype]


def _check_convolution(described, case, dtype):
    node, op = case.node, case.op
    stride, pad, dilate = [node.sy, node.sx], [node.ph, node.pw], [node.dy, node.dx]
    kernel = case.inputs[1][0][2:] if op != 'conv_wgrad' else case.outputs[0][2:]

    def out_size(size, axis):
        return get_conv_outsize(size, kernel[axis], stride[axis], pad[axis], d=dilate[axis])
    params = described.graph.inspect()['nodes'][0]['params']
    assert (params['stride'], params['padding'], params['dilation']) == (stride, pad, dilate)
    (inferred, _), = described.inferred[op]
    if op == 'conv_fprop':
        (n, c, h, w), _ = case.inputs[0]
        y = case.outputs[0]
        assert y[2:] == (out_size(h, 0), out_size(w, 1))
        assert inferred == list(y)  # the frontend infers chainer's output size
        _check_tensor(described, 'x', case.inputs[0][0], dtype)
        _check_tensor(described, 'W', case.inputs[1][0], dtype)
        _check_tensor(described, 'y', y, dtype)
    elif op == 'conv_dgrad':
        gy, gx = case.inputs[0][0], case.outputs[0]
        assert gy[2:] == (out_size(gx[2], 0), out_size(gx[3], 1))
        # The frontend infers the smallest input of that output size; where a stride leaves
        # a choice (224 -> 112 with 7x7/2, pad 3, as 223), the product declares chainer's.
        assert inferred[:2] == list(gx[:2])
        for axis in (0, 1):
            assert out_size(inferred[2 + axis], axis) == gy[2 + axis]
            assert inferred[2 + axis] <= gx[2 + axis] < inferred[2 + axis] + stride[axis]
        _check_tensor(described, 'gy', gy, dtype)
        _check_tensor(described, 'gx', gx, dtype)
    else:
        (n, c, h, w), _ = case.inputs[0]
        gy, gW = case.inputs[1][0], case.outputs[0]
        assert gy[2:] == (out_size(h, 0), out_size(w, 1))
        assert inferred in ([], list(gW))  # the frontend leaves the filter's dims to the caller
        _check_tensor(described, 'x', case.inputs[0][0], dtype)
        _check_tensor(described, 'gy', gy, dtype)
        _check_tensor(described, 'gW', gW, dtype)


def _check_batch_norm(described, case, dtype):
    x = case.inputs[0][0]
    c = x[1]
    channel = [1, c, 1, 1]
    inferred = described.inferred[case.op]
    assert case.outputs[0] == x  # chainer's y (or gx) is x's shape
    if case.op == 'batchnorm_inference':
        assert inferred == [(list(x), _row_major(x))]
        outputs = {'y': x}
    else:
        stats = ('mean', 'inv_std') if case.op == 'batchnorm' else ('ggamma', 'gbeta')
        # The batch statistics (training) or the parameters' gradients (backward): (C,)
        # in chainer, (1, C, 1, 1) in the graph.
        if case.op == 'batchnorm':
            assert case.node.mean.shape == case.node.inv_std.shape == (c,)
        else:
            assert case.outputs[1:] == ((c,), (c,))
        assert inferred[:3] == [(list(x), _row_major(x))] + [(channel, _row_major(channel))] * 2
        assert all(t is None for t in inferred[3:])  # no running statistics in the graph
        outputs = dict({'y' if case.op == 'batchnorm' else 'gx': x},
                       **{name: channel for name in stats})
    _check_tensor(described, 'x', x, dtype)
    for role, shape in outputs.items():
        _check_tensor(described, role, shape, dtype if role in ('y', 'gx') else numpy.float32)


@pytest.fixture
def installed():
    fe = _Describing()
    dispatch.install(fe)
    yield fe
    dispatch.uninstall()


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float16])
def test_every_graph_of_a_resnet50_step_is_what_the_frontend_and_chainer_say(
        step, installed, dtype):
    seen = collections.Counter()
    kernels = set()
    described_keys = set()
    for case in step.cases:
        describe = _describe_float32 if dtype == numpy.float32 else _describe_float16
        described = describe(installed, case)
        assert described.key.op == case.op and described.key.dtype == numpy.dtype(dtype).name
        context = described.graph.inspect()['context']
        assert context['io_data_type'] == str({
            numpy.float32: frontend_module.data_type.FLOAT,
            numpy.float16: frontend_module.data_type.HALF}[dtype])
        assert context['compute_data_type'] == str(frontend_module.data_type.FLOAT)
        assert described.validation in ('python', 'full')
        if case.op.startswith('conv'):
            _check_convolution(described, case, dtype)
            node = case.node
            kernels.add((case.op, case.inputs[1][0][2:] if case.op != 'conv_wgrad'
                         else case.outputs[0][2:], (node.sy, node.sx), (node.ph, node.pw)))
        else:
            _check_batch_norm(described, case, dtype)
        seen[case.op] += 1
        described_keys.add(described.key)
    # The whole step went through: every operation, every kind of ResNet-50 convolution.
    assert set(seen) == set(OPS.values())
    assert step.convolutions == step.batch_norms == 53  # ResNet-50's
    assert seen == {'conv_fprop': 2 * 53, 'conv_wgrad': 53, 'batchnorm': 53,
                    'batchnorm_backward': 53, 'batchnorm_inference': 53,
                    'conv_dgrad': 52}  # not the stem's: the image needs no gradient
    for op in ('conv_fprop', 'conv_dgrad', 'conv_wgrad'):
        assert {k[1:] for k in kernels if k[0] == op} >= {
            ((7, 7), (2, 2), (3, 3)), ((1, 1), (1, 1), (0, 0)), ((3, 3), (1, 1), (1, 1)),
            ((3, 3), (2, 2), (1, 1)), ((1, 1), (2, 2), (0, 0))} - (
            {((7, 7), (2, 2), (3, 3))} if op == 'conv_dgrad' else set())
    assert len(described_keys) < len(step.cases)  # repeated layers share their case keys


def test_what_only_a_gpu_run_checks():
    """Each step of GPU_ONLY reaches the C++ lowering and stops at its cuDNN handle here;
    the handle, device properties and cuDNN's version need libcudnn."""
    try:
        frontend_module.backend_version()
    except Exception as e:
        assert 'cudnn' in str(e), e  # the library, not something else
    else:
        pytest.fail('cuDNN\'s library loads here: the steps {} can run and this file should '
                    'build the graphs in full'.format(', '.join(GPU_ONLY)))
    for make in (frontend_module.create_handle,
                 lambda: frontend_module.create_device_properties(0)):
        with pytest.raises(RuntimeError, match='cudnn'):
            make()

    fe = _Describing(validate=False)
    steps = {GPU_ONLY[0]: lambda g: g.validate(),
             'build_operation_graph': lambda g: g.build_operation_graph(),
             'create_execution_plans': lambda g: g.create_execution_plans(
                 [frontend_module.heur_mode.A, frontend_module.heur_mode.FALLBACK]),
             'check_support': lambda g: g.check_support(),
             'build_plans': lambda g: g.build_plans()}
    assert tuple(steps) == GPU_ONLY
    x, W = _empty((1, 64, 56, 56), numpy.float32), _empty((64, 64, 3, 3), numpy.float32)
    conv = convolution_2d.Convolution2DFunction(1, 1)
    for name, run in steps.items():
        graph = _described(lambda: fe.convolution_forward(x, W, conv)).graph._graph
        with pytest.raises(Exception) as stopped:
            run(graph)
        frames = [frame.name for frame in traceback.extract_tb(stopped.value.__traceback__)]
        assert all(f in frames for f in LINE), (name, frames)
    # And with no built plan nothing further is asked of the frontend.
    with pytest.raises(RuntimeError, match='build'):
        graph.get_workspace_size()
