"""Shims that let chainer 7.8.1 and chainercv 0.13.1 run on Python 3.11/3.12 and NumPy 2.

Importing the ``distributed`` package applies them once, before chainer is imported.
Each shim is applied only when the thing it stands in for is missing, and each has a
test in tests/distributed/test_compat.py (the CuPy ones: tests/system/test_gpu.py; the
CUDA sources: tests/system/test_cuda_kernels.py) that fails without it.
``APPLIED`` lists what was done; ``SHIMS`` lists the shims in the order they run. Three
shims touch modules that must not load at import (chainermn starts MPI, and importing
``distributed`` must not import chainer): the runtime applies them when it starts.
"""
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import types
import warnings

import numpy

APPLIED = []


def _numpy_sctypes():
    # chainer.functions.array.as_strided reads np.sctypes at import; NumPy 2.0 removed it.
    if 'sctypes' in numpy.__dict__:
        return
    numpy.sctypes = {
        'int': [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        'uint': [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        'float': [numpy.float16, numpy.float32, numpy.float64, numpy.longdouble],
        'complex': [numpy.complex64, numpy.complex128, numpy.clongdouble],
        'others': [bool, object, bytes, str, numpy.void],
    }
    APPLIED.append('numpy.sctypes')


def _numpy_distutils():
    # chainer._environment_check imports numpy.distutils.system_info (used only on macOS
    # to detect Accelerate); numpy.distutils does not exist on Python >= 3.12.
    # On 3.11 the real one exists; import it once with its DeprecationWarning silenced (the
    # warning is about chainer's import, and under -W error it would stop chainer importing).
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        try:
            importlib.import_module('numpy.distutils.system_info')
            return
        except ImportError:
            pass
    package = types.ModuleType('numpy.distutils')
    package.__path__ = []
    system_info = types.ModuleType('numpy.distutils.system_info')
    system_info.get_info = lambda name, notfound_action=0: {}
    package.system_info = system_info
    numpy.distutils = package  # chainer reads numpy.distutils.system_info.get_info
    sys.modules['numpy.distutils'] = package
    sys.modules['numpy.distutils.system_info'] = system_info
    APPLIED.append('numpy.distutils.system_info')


class _ResolutionError(Exception):
    pass


class _DistributionNotFound(_ResolutionError):
    pass


class _VersionConflict(_ResolutionError):
    pass


def _require(requirement):
    from packaging.requirements import Requirement
    req = Requirement(requirement)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        raise _DistributionNotFound(req.name)
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        raise _VersionConflict(req.name, version, str(req.specifier))
    return [_get_distribution(req.name)]


def _get_distribution(name):
    try:
        return types.SimpleNamespace(project_name=name,
                                     version=importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        raise _DistributionNotFound(name)


def _pkg_resources():
    # chainer and chainercv import pkg_resources at run time (version checks); setuptools
    # >= 81 no longer ships it. Where it exists, import it once with its deprecation
    # warning silenced, since the warning is about chainer's code, not the user's.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            import pkg_resources  # noqa: F401
            return
        except ImportError:
            pass
    module = types.ModuleType('pkg_resources')
    module.DistributionNotFound = _DistributionNotFound
    module.VersionConflict = _VersionConflict
    module.ResolutionError = _ResolutionError
    module.require = _require
    module.get_distribution = _get_distribution
    sys.modules['pkg_resources'] = module
    APPLIED.append('pkg_resources')


def _strtobool(value):
    value = value.lower()
    if value in ('y', 'yes', 't', 'true', 'on', '1'):
        return 1
    if value in ('n', 'no', 'f', 'false', 'off', '0'):
        return 0
    raise ValueError('invalid truth value {!r}'.format(value))


def _distutils_util():
    # chainercv.utils.download imports distutils.util.strtobool at import; Python 3.12
    # removed distutils, and only an installed setuptools puts a stand-in back.
    try:
        import distutils.util  # noqa: F401
        return
    except ImportError:
        pass
    package = types.ModuleType('distutils')
    package.__path__ = []
    package.__spec__ = importlib.machinery.ModuleSpec('distutils', None, is_package=True)
    util = types.ModuleType('distutils.util')
    util.strtobool = _strtobool
    package.util = util
    sys.modules['distutils'] = package
    sys.modules['distutils.util'] = util
    APPLIED.append('distutils.util')


def _raise_no_gpu_nms(*args, **kwargs):
    raise NotImplementedError(
        'chainercv GPU non-maximum suppression (_nms_gpu_post) is not built: its '
        'Cython 0.28 C does not compile on Python >= 3.11 / NumPy 2 (see '
        'scripts/build_wheels.py). Classification never needs it.')


def _chainercv_nms_gpu_post():
    # chainercv imports its C extension _nms_gpu_post at import time; the wheel built by
    # scripts/build_wheels.py leaves it out (it serves detection on the GPU only). Look for
    # the file: asking the import system would import chainercv, and chainer, right here.
    name = 'chainercv.utils.bbox._nms_gpu_post'
    if name in sys.modules:
        return
    spec = importlib.util.find_spec('chainercv')
    if spec is None:
        return
    for folder in spec.submodule_search_locations or ():
        for suffix in importlib.machinery.all_suffixes():
            if os.path.exists(os.path.join(folder, 'utils', 'bbox', '_nms_gpu_post' + suffix)):
                return
    module = types.ModuleType(name)
    module._nms_gpu_post = _raise_no_gpu_nms
    sys.modules[name] = module
    APPLIED.append(name)


def _chainer_version_warning():
    # chainer 7.8.1 declares CuPy >= 7.7, < 8 and warns on every import when a newer CuPy is
    # installed under a name it checks ('cupy', as source and conda builds are; not the
    # cupy-cuda12x/13x wheels). CuPy 13/14 is the supported combination here (docs/gpus.md).
    # A value the user set is kept.
    if 'CHAINER_WARN_VERSION_MISMATCH' in os.environ:
        return
    os.environ['CHAINER_WARN_VERSION_MISMATCH'] = '0'
    APPLIED.append('CHAINER_WARN_VERSION_MISMATCH=0')


def _note(entry):
    # For shims that cannot tell from the outside whether they ran before: apply() again
    # must not list them twice.
    if entry not in APPLIED:
        APPLIED.append(entry)


def _cupy_major():
    try:
        import cupy
        return int(cupy.__version__.split('.')[0])
    except Exception:  # not installed, or an install chainer will report as broken
        return 0


def _cupy_quiet_absences():
    # CuPy >= 14 has no cuDNN, so chainer warns 'cuDNN is not enabled. Please reinstall CuPy'
    # on first GPU use, advice that cannot help; and cupy.cuda.nccl warns at import (chainer
    # and ChainerMN import it, on every rank) when libnccl is missing. describe_runtime
    # reports both once, with what they cost.
    major = _cupy_major()
    if not major:
        return
    if major >= 14:
        warnings.filterwarnings('ignore', message='cuDNN is not enabled', category=UserWarning,
                                module=r'chainer\.backends\.cuda')
        _note('cuDNN warning silenced (CuPy {})'.format(major))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            from cupy.cuda import nccl
        except Exception:
            return
    if not getattr(nccl, 'available', True):
        _note('cupy.cuda.nccl imported quietly (no libnccl)')


def _unpack_params(params, attr_name, buffer, transfer_dtype, zero_fill, stream=None):
    # The same work as chainermn 7.8.1's unpack_params (copy each parameter's slice of the
    # communication buffer back into it), converting dtypes with astype.
    offset = 0
    for param in params:
        array = getattr(param, attr_name)
        if array is None and attr_name == 'grad' and zero_fill:
            array = param.xp.empty_like(param.data)
            setattr(param, attr_name, array)
        nbytes = array.size * numpy.dtype(transfer_dtype).itemsize
        if array.dtype == transfer_dtype:
            buffer.to_device(array, nbytes, offset, stream)
        else:
            staged = array.astype(transfer_dtype)
            buffer.to_device(staged, nbytes, offset, stream)
            array[...] = staged.astype(array.dtype)
        offset += nbytes


def chainermn_unpack_params():
    """Applied by ``comm.create_communicator``, not by ``apply``: chainermn's module
    initialises MPI as it loads, which must wait until the runtime is set up.

    chainermn's unpack_params converts a parameter whose dtype differs from the buffer's
    with ``xp.array(v, copy=False, dtype=...)``, which NumPy 2 and CuPy 14 refuse (a copy
    is needed). It runs in pure_nccl's bcast_data, the first update and every resume:
    under train.dtype=mixed16 the buffer is float16 and BatchNorm's parameters float32,
    so a GPU run would stop at its first step. Idempotent.
    """
    from chainermn.communicators import _memory_utility
    if _memory_utility.unpack_params is not _unpack_params:
        _memory_utility.unpack_params = _unpack_params
    _note('chainermn unpack_params converts with astype')


_CUDA_FP16 = '#include <cuda_fp16.h>\n'


def _with_cuda_fp16(builder):
    # The kernel object the builder made is not compiled until it is launched, so the
    # first one is only read for its source and name, never used.
    def build():
        kernel = builder()
        if 'cuda_fp16.h' in kernel.code:
            return kernel
        from chainer.backends import cuda
        return cuda.raw(_CUDA_FP16 + kernel.code, kernel.name)
    build.cuda_fp16 = True
    return build


CHAINERMN_HALF_KERNELS = ('_cupy_batched_pack_params', '_cupy_batched_unpack_params')
"""The builders in ``chainermn.communicators._memory_utility`` whose kernels use ``half``."""


def chainermn_half_kernels():
    """Applied by ``comm.create_communicator``, not by ``apply``: chainermn's module
    initialises MPI as it loads, which must wait until the runtime is set up.

    ChainerMN's batched pack/unpack kernels (``_memory_utility``, the two ``chainer.cuda.raw``
    kernels that copy gradients into and out of the allreduce buffer) use the CUDA type
    ``half`` and include only ``<cupy/carray.cuh>``, which brings ``cuda_fp16.h`` up to CuPy
    13 and no longer does in CuPy 14: NVRTC stops with ``identifier "half" is undefined``
    at the first gradient allreduce of every GPU run (``batched_copy`` is on by default).
    Their builders are wrapped to put ``#include <cuda_fp16.h>`` first; the header is
    CUDA's own (NVIDIA's ``nvidia-cuda-runtime`` wheel or the toolkit), found by CuPy
    where it finds the CUDA headers, and harmless where ``carray.cuh`` already includes
    it. tests/system/test_cuda_kernels.py compiles both with NVRTC. Idempotent.
    """
    from chainermn.communicators import _memory_utility
    for name in CHAINERMN_HALF_KERNELS:
        builder = getattr(_memory_utility, name)
        if not getattr(builder, 'cuda_fp16', False):
            setattr(_memory_utility, name, _with_cuda_fp16(builder))
    _note('chainermn half kernels include cuda_fp16.h')


def _summary_add_in_float64(original):
    def add(self, value, weight=1):
        dtype = getattr(value, 'dtype', None)
        if dtype is not None and dtype.kind == 'f' and dtype.itemsize < 8:
            value = value.astype(numpy.float64)  # on the value's device: no copy to the host
        return original(self, value, weight)
    add.float64 = True
    return add


def chainer_summary_float64():
    """Applied by ``runtime.create_runtime``, not by ``apply``: it patches chainer's
    reporter, and importing ``distributed`` must not import chainer.

    chainer's ``reporter.Summary`` (behind LogReport, Evaluator and PlotReport) starts its
    sums as Python ``0.0``. Under NumPy 2's promotion rules (NEP 50) ``0.0`` plus a float16
    value stays float16, so with ``train.dtype=mixed16`` a loss summed over an epoch's
    iterations or evaluation batches loses its digits (3,000 values of 2.1 average to
    2.645) and its squares overflow. Values are added as float64 instead. Idempotent.
    """
    if (0.0 + numpy.array(1, numpy.float16)).dtype != numpy.float16:
        return  # NumPy 1: a Python float made the sum float64 already
    from chainer import reporter
    if not getattr(reporter.Summary.add, 'float64', False):
        reporter.Summary.add = _summary_add_in_float64(reporter.Summary.add)
    _note('chainer reporter sums in float64')


# In the order apply() runs them.
SHIMS = (_numpy_sctypes, _numpy_distutils, _pkg_resources, _distutils_util,
         _chainercv_nms_gpu_post, _chainer_version_warning, _cupy_quiet_absences)


def apply():
    """Apply every shim that this interpreter needs. Idempotent."""
    if 'chainer' in sys.modules and not APPLIED:
        warnings.warn('chainer was imported before distributed; import distributed first '
                      'so that distributed.compat can prepare NumPy 2 for it.')
    for shim in SHIMS:
        shim()
