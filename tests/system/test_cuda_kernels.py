"""The GPU path checked on a machine without a GPU: the real CuPy 14 (cupy-cuda13x 14.2.0, the
one the GPU machines have) imported as a GPU run imports it, and the CUDA sources a ResNet-50
training step compiles, compiled by NVRTC for Hopper (compute_90) and Ampere (compute_80)
against the CUDA 13 headers of NVIDIA's PyPI wheels, in float32 and, where mixed16 uses it,
float16.

`make cuda-check` builds the environment for them (requirements-cuda.txt, in .venv-cuda) and
runs this file with REQUIRE_CUDA_CHECK=1: there a missing CuPy or NVRTC fails the tests instead
of skipping them. In the plain `make test` environment they skip with one line.

The imports need no stand-in: the libraries chainer and ChainerMN load (cuBLAS, NCCL) come
from NVIDIA's PyPI wheels, as PyTorch's CUDA 13 wheels bring them to the GPU machines; only the
driver and the device are absent. What no GPU can give, and what stands in for it here:
- The device's compute capability, which CuPy's compile call asks the device for: the tests
  name the architectures and call NVRTC through CuPy's own program wrapper
  (``cupy.cuda.compiler._NVRTCProgram``) with the options CuPy assembles for every kernel
  (``assemble_cupy_compiler_options``: CuPy's and CUDA's include folders) plus those it adds
  on a device (``-ftz=true``, ``--device-as-default-execution-space``, the architecture).
- The launch, which tells CuPy each argument's kind (array or scalar) and dtype: KERNELS says
  what a ResNet-50 step passes to each kernel, and CuPy's source builders
  (``cupy._core._kernel._get_elementwise_kernel_code``,
  ``cupy._core._reduction._ReductionKernel_get_cached_function_code``) turn it into the source
  a launch compiles. They are private: requirements-cuda.txt pins CuPy's exact version.
  Arrays are described as the contiguous 1-d views CuPy's ``reduce_dims`` makes of them.
- ``chainer.backends.cuda.raw``, whose per-device cache asks the device for its id: a
  recorder takes the source ChainerMN's builders hand it.
The kernels chainer defines are read from chainer's own source (its ``cuda.elementwise`` and
``cuda.reduce`` calls, which are literal), never restated here.
"""
import ast
import importlib
import inspect
import json
import os
import subprocess
import sys

import numpy
import pytest

from distributed import compat
from launching import REPO
from prerequisites import require

CUPY_VERSION = '14.2.0'
"""The CuPy whose private kernel builders these tests drive (requirements-cuda.txt)."""
ARCHITECTURES = ('compute_90', 'compute_80')
"""Hopper (H100, H200) and Ampere (A100)."""


def _why_not():
    """Why the tests cannot run here, or None."""
    try:
        import cupy
    except ImportError as e:
        return 'CuPy is not installed ({})'.format(e)
    if cupy.__version__ != CUPY_VERSION:
        return ('CuPy {} is installed; these tests drive private kernel builders of CuPy {} '
                '(requirements-cuda.txt)'.format(cupy.__version__, CUPY_VERSION))
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # the library is missing or does not load
        return 'NVRTC does not load ({}: {})'.format(type(e).__name__, e)
    from cupy._core import core
    folders = [o[2:] for o in core.assemble_cupy_compiler_options(()) if o.startswith('-I')]
    if not any(os.path.exists(os.path.join(f, 'cuda_fp16.h')) for f in folders):
        return 'no CUDA headers (cuda_fp16.h) in CuPy\'s include path {}'.format(folders)
    return None


require('CUDA checks', _why_not(), 'REQUIRE_CUDA_CHECK',  # make cuda-check sets it
        '`make cuda-check` installs what they need')

import cupy  # noqa: E402  (only once it is known to be there)
from cupy._core import _accelerator, _carray, _kernel, _reduction, _scalar, core  # noqa: E402
from cupy.cuda import compiler  # noqa: E402

pytestmark = pytest.mark.cuda

# CuPy's _ArgKind values (cupy/_core/_kernel.pxd).
NDARRAY, INDEXER, SCALAR = 1, 2, 3

FLOAT32 = {'T': numpy.float32, 'U': numpy.float32, 'X': numpy.float32, 'S': numpy.int32}
MIXED16 = {'T': numpy.float16, 'U': numpy.float32, 'X': numpy.float32, 'S': numpy.int32}
"""The dtype of each type letter under train.dtype=float32 and mixed16: activations and
convolution weights (T) in float16, BatchNorm's parameters and statistics (U, X) in float32,
labels and indexes (S) int32."""

# A ResNet-50 step's kernels: (chainer module, kernel name) -> (parameters passed as Python
# scalars, the type maps it runs with). The optimizer's kernels and BatchNorm's running
# averages run in float32 under mixed16 too (float32 master copies, float32 statistics).
KERNELS = {
    ('chainer.utils.conv', 'im2col'): (
        {'h', 'w', 'out_h', 'out_w', 'kh', 'kw', 'sy', 'sx', 'ph', 'pw', 'dy', 'dx'},
        (FLOAT32, MIXED16)),
    ('chainer.utils.conv', 'col2im'): (
        {'h', 'w', 'out_h', 'out_w', 'kh', 'kw', 'sy', 'sx', 'ph', 'pw', 'dy', 'dx'},
        (FLOAT32, MIXED16)),
    ('chainer.functions.normalization.batch_normalization', 'bn_fwd'): (
        set(), (FLOAT32, MIXED16)),
    ('chainer.functions.normalization.batch_normalization', 'bn_bwd'): (
        {'inv_m'}, (FLOAT32, MIXED16)),
    ('chainer.functions.normalization.batch_normalization', 'update_mean_var'): (
        {'decay', 'adjust'}, (FLOAT32,)),
    ('chainer.functions.activation.relu', 'relu_bwd'): (set(), (FLOAT32, MIXED16)),
    ('chainer.functions.pooling.max_pooling_nd', 'max_pool_2d_fwd'): (
        {'d_0', 'd_1', 'out_0', 'out_1', 'k_0', 'k_1', 's_0', 's_1', 'p_0', 'p_1'},
        (FLOAT32, MIXED16)),
    ('chainer.functions.pooling.max_pooling_nd', 'max_pool_2d_bwd'): (
        {'d_0', 'd_1', 'out_0', 'out_1', 'k_0', 'k_1', 's_0', 's_1', 'p_0', 'p_1'},
        (FLOAT32, MIXED16)),
    ('chainer.functions.loss.softmax_cross_entropy', 'crossent_fwd'): (
        {'n_channel', 'ignore_label'}, (FLOAT32, MIXED16)),
    ('chainer.functions.loss.softmax_cross_entropy', 'softmax_crossent_bwd'): (
        {'n_channel', 'n_unit', 'ignore_label'}, (FLOAT32, MIXED16)),
    ('chainer.optimizers.momentum_sgd', 'momentum_sgd'): ({'lr', 'momentum'}, (FLOAT32,)),
    ('chainer.optimizer_hooks.weight_decay', 'weight_decay'): ({'decay'}, (FLOAT32,)),
    # The product's own: the mean of the gradients, float16 under mixed16.
    ('distributed.comm', 'distributed_divide_in_place'): ({'factor'}, (FLOAT32, MIXED16)),
}

NOT_IN_A_STEP = {
    ('chainer.functions.loss.softmax_cross_entropy', 'softmax_crossent_no_reduce_fwd'):
        'reduce="no" only; the classifier takes the mean',
    ('chainer.functions.loss.softmax_cross_entropy', 'softmax_crossent_weight_bwd'):
        'class_weight only; the recipe has none',
    ('chainer.functions.pooling.average_pooling_2d', 'avg_pool_fwd'):
        'chainercv\'s ResNet pools globally with F.average (CuPy reductions)',
    ('chainer.functions.pooling.average_pooling_2d', 'avg_pool_bwd'):
        'as avg_pool_fwd',
}
"""Kernels of the same modules that a ResNet-50 training step never launches, and why."""

NOT_GENERATED = {
    'CuPy ufuncs (add, multiply, maximum, exp, log, isfinite, astype: ReLU forward, '
    'log-softmax, loss scaling, the float32 master copies)':
        'their source builder (_kernel._get_ufunc_kernel) is a cdef function, not callable '
        'from Python; they are CuPy\'s own, built from CuPy\'s headers as the kernels here are',
    'CUB block reductions (sum, mean, var: BatchNorm statistics, F.average, the loss mean)':
        'CuPy 14 uses CUB for reductions by default (CUPY_ACCELERATORS=cub); their source is '
        'built only inside a per-device cache, which asks the device for its id',
    'cuBLAS GEMMs (convolution after im2col, the last linear layer)':
        'a library call, no CUDA source',
}
"""What a step runs that these tests cannot generate without a GPU, and why: a GPU run
(scripts/gpu_check.sh) is what checks them."""


def _kernel_calls(source):
    """``{name: cupy kernel}`` for each literal ``cuda.elementwise``/``cuda.reduce`` call
    (``chainer.cuda.`` or ``cuda.``) in ``source``, built as chainer builds it."""
    kernels = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call)
                and ast.unparse(node.func).split('.')[-2:] in (['cuda', 'elementwise'],
                                                               ['cuda', 'reduce'])):
            continue
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            continue  # built from variables (the pooling kernel generators, read below)
        if node.func.attr == 'elementwise':
            kernels[args[3]] = cupy.ElementwiseKernel(*args, **kwargs)
        else:
            kernels[args[6]] = cupy.ReductionKernel(*args, **kwargs)
    return kernels


def _max_pooling_kernels():
    # max_pooling_nd builds its kernels' parameters and body from a generator per dimension.
    from chainer.functions.pooling import max_pooling_nd_kernel as generators
    kernels = {}
    for generator in (generators.MaxPoolingNDKernelForward,
                      generators.MaxPoolingNDKernelBackward):
        in_params, out_params, operation, name = generator.generate(2)
        kernels[name] = cupy.ElementwiseKernel(in_params, out_params, operation, name)
    return kernels


def step_kernels():
    """``{(module, name): cupy kernel}`` for every kernel of KERNELS and NOT_IN_A_STEP's
    modules."""
    found = {}
    for module in sorted({m for m, _ in list(KERNELS) + list(NOT_IN_A_STEP)}):
        calls = (_max_pooling_kernels() if module.endswith('max_pooling_nd')
                 else _kernel_calls(inspect.getsource(importlib.import_module(module))))
        found.update({(module, name): kernel for name, kernel in calls.items()})
    return found


def _arginfo(param, scalars, types, ndim=1):
    dtype = param.dtype if param.dtype is not None else types[param.ctype]
    if param.name in scalars:
        return _kernel._ArgInfo(SCALAR, _scalar.CScalar, numpy.dtype(dtype).type, 0, True, True)
    return _kernel._ArgInfo(NDARRAY, cupy.ndarray, numpy.dtype(dtype).type, ndim, True, True)


def _type_map(params, types, extra=()):
    letters = {p.ctype for p in params if p.dtype is None and p.ctype}
    return _kernel._TypeMap(tuple(sorted([(c, types[c]) for c in letters] + list(extra))))


def kernel_source(kernel, scalars, types):
    """The CUDA source CuPy compiles when ``kernel`` is launched with these arguments:
    ``scalars`` names the parameters given as Python scalars, ``types`` maps type letters to
    dtypes. CuPy's headers come first, as CuPy's compile puts them."""
    header = ''.join('#include <{}>\n'.format(h) for h in core._cupy_header_list)
    if isinstance(kernel, cupy.ElementwiseKernel):
        params = kernel.params
        arginfos = tuple(_arginfo(p, scalars, types) for p in params[:-1]) + (
            _kernel._ArgInfo(INDEXER, _carray.Indexer, None, 1, True, True),)
        return header + _kernel._get_elementwise_kernel_code(
            arginfos, _type_map(params, types), params, kernel.operation, kernel.name,
            kernel.preamble)
    # A step's reductions (the loss) reduce to one value: 0-d outputs and output index.
    params = kernel._params  # inputs, outputs, _in_ind, _out_ind, _block_stride
    nargs = kernel.nin + kernel.nout
    arginfos = tuple(_arginfo(p, scalars, types) for p in params[:kernel.nin]) + tuple(
        _arginfo(p, scalars, types, ndim=0) for p in params[kernel.nin:nargs]) + (
        _kernel._ArgInfo(INDEXER, _carray.Indexer, None, 1, True, True),
        _kernel._ArgInfo(INDEXER, _carray.Indexer, None, 0, True, True),
        _kernel._ArgInfo(SCALAR, _scalar.CScalar, numpy.int32, 0, True, True))
    # IndexT: the index type of 32-bit-indexable arrays, which CuPy's launch adds.
    type_map = _type_map(params[:nargs], types, [('IndexT', numpy.int32)])
    return header + _reduction._ReductionKernel_get_cached_function_code(
        kernel.nin, kernel.nout, params, arginfos, type_map, kernel.name, 512,
        kernel.reduce_type, kernel.identity, kernel.map_expr, kernel.reduce_expr,
        kernel.post_map_expr, kernel.preamble, kernel.options)


def nvrtc_compile(source, architecture):
    """PTX of ``source`` from NVRTC, with the options CuPy compiles a kernel with.

    Raises AssertionError with NVRTC's log when it does not compile."""
    options = core.assemble_cupy_compiler_options(()) + (
        '-ftz=true', '--device-as-default-execution-space', '-arch=' + architecture)
    try:
        ptx, _ = compiler._NVRTCProgram(source, 'kern.cu', method='ptx').compile(options)
    except compiler.CompileException as e:
        raise AssertionError('NVRTC ({}) did not compile it:\n{}'.format(
            architecture, e.get_message())) from None
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert '.target sm_' + architecture.split('_')[1] in ptx
    return ptx


# ---- Importing as a GPU run does ---------------------------------------------------------

IMPORTS = r'''
import json
import launch.train  # noqa: F401  (everything the training path imports)
import chainer
import chainermn
from chainer.backends import cuda
from chainermn import nccl
from chainermn.communicators import (flat_communicator, non_cuda_aware_communicator,
                                     pure_nccl_communicator)
import cupy
from distributed import runtime
print(json.dumps({
    'cuda.available': cuda.available,
    'resolution_error': str(getattr(cuda, '_resolution_error', '')),
    'cudnn_enabled': cuda.cudnn_enabled,
    'cupy': cupy.__version__,
    'nccl': nccl._available,
    'gpus': runtime.probe_gpus()[0],
}))
'''


def test_the_training_path_imports_with_cupy_14_as_on_a_gpu():
    # A fresh interpreter: chainer decides cuda.available once, at its import.
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, '-c', IMPORTS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.splitlines()[-1])
    assert facts['cuda.available'], facts['resolution_error']
    assert facts['cupy'] == CUPY_VERSION
    assert facts['nccl'], 'ChainerMN finds no NCCL: pure_nccl would be refused'
    assert facts['cudnn_enabled'] is False  # CuPy 14 has no cuDNN: chainer's own kernels run
    assert facts['gpus'] == 0  # nothing here came from a device


# ---- ChainerMN's pack/unpack kernels -----------------------------------------------------

@pytest.fixture
def chainermn_raw_sources(monkeypatch):
    """The sources ChainerMN's batched pack and unpack builders hand ``chainer.cuda.raw``,
    once the communicator has been created as the product creates it."""
    from chainer.backends import cuda
    from chainermn.communicators import _memory_utility

    from distributed.comm import create_communicator

    class Recorded:
        def __init__(self, code, name):
            self.code, self.name = code, name

    monkeypatch.setattr(cuda, 'raw', lambda code, name, **kwargs: Recorded(code, name))
    create_communicator('naive')
    return [builder() for builder in (_memory_utility._cupy_batched_pack_params,
                                      _memory_utility._cupy_batched_unpack_params)]


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_chainermn_half_kernels_compile(chainermn_raw_sources, architecture):
    # Both copy between float16, float32 and float64 (the `half` type and float16 buffers
    # under mixed16 and comm.allreduce_dtype=float16). Fails without
    # compat.chainermn_half_kernels: CuPy 14's carray.cuh no longer includes cuda_fp16.h.
    for kernel in chainermn_raw_sources:
        ptx = nvrtc_compile(kernel.code, architecture)
        assert '.entry ' + kernel.name in ptx


def test_chainermn_half_kernels_shim_is_idempotent():
    from chainermn.communicators import _memory_utility
    compat.chainermn_half_kernels()
    builders = [getattr(_memory_utility, n) for n in compat.CHAINERMN_HALF_KERNELS]
    compat.chainermn_half_kernels()
    assert [getattr(_memory_utility, n) for n in compat.CHAINERMN_HALF_KERNELS] == builders
    assert compat.APPLIED.count('chainermn half kernels include cuda_fp16.h') == 1


# ---- The kernels chainer generates for a ResNet-50 step ----------------------------------

def test_every_kernel_of_those_modules_is_compiled_or_said_why_not():
    assert set(step_kernels()) == set(KERNELS) | set(NOT_IN_A_STEP)


def test_every_kernel_of_the_product_is_compiled():
    found = set()
    for folder in ('distributed', 'launch'):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith('.py'):
                    with open(os.path.join(root, name)) as f:
                        module = os.path.relpath(os.path.join(root, name[:-3]), REPO)
                        found |= {(module.replace(os.sep, '.'), kernel)
                                  for kernel in _kernel_calls(f.read())}
    assert found and found <= set(KERNELS)


CASES = [(key, types, architecture) for key, (_, type_maps) in sorted(KERNELS.items())
         for types in type_maps for architecture in ARCHITECTURES]


@pytest.fixture(scope='module')
def kernels():
    return step_kernels()


@pytest.mark.parametrize('key, types, architecture', CASES, ids=[
    '{}-{}-{}'.format(key[1], 'mixed16' if types is MIXED16 else 'float32', architecture)
    for key, types, architecture in CASES])
def test_chainer_kernel_compiles(kernels, key, types, architecture):
    scalars, _ = KERNELS[key]
    kernel = kernels[key]
    source = kernel_source(kernel, scalars, types)
    if types is MIXED16:
        assert 'typedef float16 T;' in source
    ptx = nvrtc_compile(source, architecture)
    assert '.entry ' + kernel.name in ptx


def test_what_cannot_be_generated_without_a_gpu_is_as_listed():
    # Each reason of NOT_GENERATED, checked against this CuPy: should one stop being true,
    # that kernel can be compiled here and belongs in KERNELS.
    assert not hasattr(_kernel, '_get_ufunc_kernel')
    assert _accelerator.ACCELERATOR_CUB in _accelerator.get_reduction_accelerators()
    from cupy._core import _cub_reduction
    assert not [n for n in dir(_cub_reduction) if n.endswith('_code')]
    assert len(NOT_GENERATED) == 3
