"""Each shim in distributed.compat is needed, and works.

Every check runs in a fresh interpreter, since what is being tested is what happens when
chainer and chainercv are first imported. A "without" check loads compat.py on its own,
applies every shim but one, and shows that chainer (or chainercv) then breaks; a "with"
check imports ``distributed`` first, as the product does, and shows that it works.
The chainermn shim is the exception: chainermn's module starts MPI as it loads, so the
shim is applied when a communicator is made: its "without" check runs in a fresh
interpreter that makes none, its "with" check makes one in this process.
"""
import glob
import importlib.metadata
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
import warnings

import numpy
from launching import REPO

COMPAT = os.path.join(REPO, 'distributed', 'compat.py')
NMS = 'chainercv.utils.bbox._nms_gpu_post'


def run(*parts, env=None, args=()):
    """Run the code ``parts`` (each dedented) in a fresh interpreter that can import the
    repository, with CHAINER_WARN_VERSION_MISMATCH unset unless ``env`` sets it."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ('PYTHONPATH', 'CHAINER_WARN_VERSION_MISMATCH')}
    environ['PYTHONPATH'] = REPO
    environ.update(env or {})
    code = ''.join(textwrap.dedent(part) for part in parts)
    return subprocess.run([sys.executable] + list(args) + ['-c', code],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def ok(*parts, **kwargs):
    done = run(*parts, **kwargs)
    assert done.returncode == 0, done.stderr
    return done


def fails(message, *parts, **kwargs):
    done = run(*parts, **kwargs)
    assert done.returncode != 0, 'expected a failure, got:\n' + done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    return done


def without(shim):
    """Code that applies every shim in compat.py except ``shim``."""
    return '''
import importlib.util
import sys
spec = importlib.util.spec_from_file_location('compat_alone', {path!r})
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
assert {shim!r} in [s.__name__ for s in compat.SHIMS]
for s in compat.SHIMS:
    if s.__name__ != {shim!r}:
        s()
'''.format(path=COMPAT, shim=shim)


def nms_extension_built():
    spec = importlib.util.find_spec('chainercv')
    folder = os.path.join(spec.submodule_search_locations[0], 'utils', 'bbox')
    return bool(glob.glob(os.path.join(folder, '_nms_gpu_post.*so'))
                + glob.glob(os.path.join(folder, '_nms_gpu_post.*pyd')))


def setuptools_has_pkg_resources():
    try:
        major = int(importlib.metadata.version('setuptools').split('.')[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major < 81


# --- numpy.sctypes -----------------------------------------------------------------------

def test_chainer_needs_sctypes_on_numpy2():
    assert int(numpy.__version__.split('.')[0]) >= 2
    fails('sctypes', without('_numpy_sctypes'), 'import chainer\n')


def test_sctypes_stand_in_serves_chainer():
    ok('''
        import distributed
        import numpy
        import chainer
        import chainer.functions as F
        from chainer.functions.array import as_strided
        assert 'numpy.sctypes' in distributed.compat.APPLIED
        # chainer builds this table from sctypes['int'] at import
        assert as_strided.index_dtype == {1: numpy.int8, 2: numpy.int16,
                                          4: numpy.int32, 8: numpy.int64}
        # and its backward refuses dtypes that are not in sctypes['float']
        x = chainer.Variable(numpy.arange(6, dtype=numpy.float32))
        y = F.as_strided(x, (2, 2), (1, 1))  # strides in elements: [[x0, x1], [x1, x2]]
        y.grad = numpy.ones((2, 2), numpy.float32)
        y.backward()
        assert x.grad.tolist() == [1, 2, 1, 0, 0, 0], x.grad
        ''')


# --- numpy.distutils.system_info -----------------------------------------------------------

BLOCK_DISTUTILS = '''
import sys
sys.modules['numpy.distutils'] = None
sys.modules['numpy.distutils.system_info'] = None
'''


def test_chainer_needs_numpy_distutils():
    # numpy.distutils is gone on Python >= 3.12; block it so that 3.11 shows the same.
    fails('numpy.distutils', BLOCK_DISTUTILS, without('_numpy_distutils'), 'import chainer\n')


def test_numpy_distutils_stand_in_serves_chainer():
    ok(BLOCK_DISTUTILS, '''
        import warnings
        import distributed
        import chainer
        from chainer import _environment_check
        assert 'numpy.distutils.system_info' in distributed.compat.APPLIED
        # the only use: on macOS chainer asks for the BLAS it is linked against
        sys.platform = 'darwin'
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            _environment_check._check_osx_numpy_backend()
        ''')


def test_real_numpy_distutils_imports_without_deprecation_warning():
    # Where numpy.distutils exists (3.11) it warns on import; that must not stop chainer.
    ok('''
        import distributed
        import chainer
        ''', args=['-W', 'error::DeprecationWarning'])


# --- pkg_resources ---------------------------------------------------------------------------

BLOCK_PKG_RESOURCES = '''
import sys
sys.modules['pkg_resources'] = None
'''


def test_chainer_and_chainercv_need_pkg_resources():
    fails('pkg_resources', BLOCK_PKG_RESOURCES, without('_pkg_resources'), 'import chainer\n')
    # chainercv needs it itself, not only through chainer
    fails("chainercv/__init__.py", BLOCK_PKG_RESOURCES, without('_pkg_resources'), '''
        try:
            import chainer
        except ImportError:
            pass
        import chainercv
        ''')


def test_pkg_resources_stand_in_serves_chainer_and_chainercv():
    ok(BLOCK_PKG_RESOURCES, '''
        import importlib.metadata
        import distributed
        import chainer
        import chainercv
        import pkg_resources
        assert 'pkg_resources' in distributed.compat.APPLIED
        assert pkg_resources is sys.modules['pkg_resources']
        assert chainercv.__version__ == importlib.metadata.version('chainercv') == '0.13.1'
        dist = pkg_resources.get_distribution('chainercv')
        assert (dist.project_name, dist.version) == ('chainercv', '0.13.1')
        numpy_version = importlib.metadata.version('numpy')
        found = pkg_resources.require('numpy>=2')
        assert [d.version for d in found] == [numpy_version], found
        try:
            pkg_resources.require('numpy<2')
            raise AssertionError('no VersionConflict')
        except pkg_resources.VersionConflict as e:
            assert e.args == ('numpy', numpy_version, '<2'), e.args
        for call in (pkg_resources.require, pkg_resources.get_distribution):
            try:
                call('no-such-distribution-here')
                raise AssertionError('no DistributionNotFound')
            except pkg_resources.DistributionNotFound as e:
                assert e.args == ('no-such-distribution-here',)
        # chainer.testing catches ResolutionError around require()
        assert issubclass(pkg_resources.DistributionNotFound, pkg_resources.ResolutionError)
        assert issubclass(pkg_resources.VersionConflict, pkg_resources.ResolutionError)
        ''')


def with_fake_cupy(tmp_path, **env):
    """Environment in which a 'cupy' 14.0.0 distribution appears to be installed (chainer
    checks that name), from interpreter start, so pkg_resources sees it too."""
    info = tmp_path / 'cupy-14.0.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: cupy\nVersion: 14.0.0\n')
    env['PYTHONPATH'] = REPO + os.pathsep + str(tmp_path)
    return env


def test_chainer_version_check_runs_on_pkg_resources_stand_in(tmp_path):
    # chainer's import-time check of optional dependencies goes through require() and
    # get_distribution(); with the check switched on, a CuPy 14 must be reported by version.
    done = ok(BLOCK_PKG_RESOURCES, '''
        import distributed
        import chainer
        ''', env=with_fake_cupy(tmp_path, CHAINER_WARN_VERSION_MISMATCH='1'))
    assert 'CuPy (cupy) version 14.0.0 may not be compatible' in done.stderr, done.stderr
    assert 'Failed to check requirement' not in done.stderr, done.stderr


# --- chainercv.utils.bbox._nms_gpu_post ------------------------------------------------------

def test_chainercv_needs_nms_gpu_post():
    if nms_extension_built():
        # then chainercv imports as it is and the stand-in must stay out of the way
        ok(without('_chainercv_nms_gpu_post'), '''
            import chainercv.utils.bbox._nms_gpu_post as m
            assert m.__spec__ is not None
            ''')
        ok('import distributed; assert {!r} not in distributed.compat.APPLIED'.format(NMS))
    else:
        fails('_nms_gpu_post', without('_chainercv_nms_gpu_post'), 'import chainercv\n')


def test_nms_gpu_post_stand_in():
    ok('''
        import numpy
        import distributed
        import chainercv
        from chainercv.utils import non_maximum_suppression
        from chainercv.utils.bbox import non_maximum_suppression as nms_module
        assert {nms!r} in distributed.compat.APPLIED
        # the CPU path does not touch the extension
        bbox = numpy.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], numpy.float32)
        keep = non_maximum_suppression(bbox, 0.5, numpy.array([0.9, 0.8, 0.7]))
        assert keep.tolist() == [0, 2], keep
        # the GPU path ends in the stand-in, which says why it is missing
        try:
            nms_module._nms_gpu_post(numpy.zeros(1, numpy.uint64), 1, 64, 1)
            raise AssertionError('no NotImplementedError')
        except NotImplementedError as e:
            message = str(e)
        assert '_nms_gpu_post' in message and 'not built' in message, message
        assert 'build_wheels.py' in message, message
        '''.format(nms=NMS))


def test_importing_distributed_does_not_import_chainer():
    # The shims must be in place before chainer's first import, so looking for the
    # chainercv extension must not import chainercv (and with it chainer).
    ok('''
        import sys
        import distributed
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('chainer', 'chainercv'))
        assert loaded == [m for m in [{nms!r}] if m in distributed.compat.APPLIED], loaded
        '''.format(nms=NMS))


# --- CHAINER_WARN_VERSION_MISMATCH -----------------------------------------------------------

def test_chainer_warns_about_a_current_cupy_without_the_default(tmp_path):
    done = ok(without('_chainer_version_warning'), 'import chainer\n',
              env=with_fake_cupy(tmp_path))
    assert 'may not be compatible' in done.stderr, done.stderr


def test_version_mismatch_warning_is_off_by_default(tmp_path):
    done = ok('''
        import os
        import distributed
        import chainer
        assert os.environ['CHAINER_WARN_VERSION_MISMATCH'] == '0'
        assert 'CHAINER_WARN_VERSION_MISMATCH=0' in distributed.compat.APPLIED
        ''', env=with_fake_cupy(tmp_path))
    assert 'may not be compatible' not in done.stderr, done.stderr


def test_version_mismatch_setting_of_the_user_is_kept(tmp_path):
    done = ok('''
        import os
        import distributed
        import chainer
        assert os.environ['CHAINER_WARN_VERSION_MISMATCH'] == '1'
        assert not any(a.startswith('CHAINER_') for a in distributed.compat.APPLIED)
        ''', env=with_fake_cupy(tmp_path, CHAINER_WARN_VERSION_MISMATCH='1'))
    assert 'may not be compatible' in done.stderr, done.stderr


# --- distutils.util ----------------------------------------------------------------------

# Python 3.12 has no distutils; setuptools, where installed, puts a stand-in back. Block both
# so that every interpreter shows what a bare 3.12 does.
BLOCK_STDLIB_DISTUTILS = '''
import sys
sys.modules['distutils'] = None
sys.modules['distutils.util'] = None
'''


def test_chainercv_needs_distutils_util():
    fails('distutils', BLOCK_STDLIB_DISTUTILS, without('_distutils_util'),
          'import chainer\nimport chainercv\n')


def test_distutils_util_stand_in_serves_chainercv():
    ok(BLOCK_STDLIB_DISTUTILS, '''
        import distributed
        import chainercv
        from chainercv.utils.download import strtobool
        assert 'distutils.util' in distributed.compat.APPLIED
        assert strtobool('ON') == 1 and strtobool('off') == 0
        try:
            strtobool('maybe')
        except ValueError:
            pass
        else:
            raise AssertionError('strtobool accepted maybe')
        ''')


# --- APPLIED ---------------------------------------------------------------------------------

def expected_applied(blocked=()):
    """What this interpreter needs, from facts about it rather than from compat.py."""
    expected = []
    if int(numpy.__version__.split('.')[0]) >= 2:
        expected.append('numpy.sctypes')
    if sys.version_info >= (3, 12) or 'numpy.distutils' in blocked:
        expected.append('numpy.distutils.system_info')
    if not setuptools_has_pkg_resources() or 'pkg_resources' in blocked:
        expected.append('pkg_resources')
    if sys.version_info >= (3, 12) and importlib.util.find_spec('setuptools') is None:
        expected.append('distutils.util')  # only setuptools brings distutils back on 3.12
    if not nms_extension_built():
        expected.append(NMS)
    expected.append('CHAINER_WARN_VERSION_MISMATCH=0')
    expected.extend(cupy_entries())
    return expected


def cupy_entries():
    """The CuPy shims' entries (tests/system/test_gpu.py tests those shims): none without CuPy."""
    try:
        import cupy
        major = int(cupy.__version__.split('.')[0])
    except Exception:  # not installed, or broken: chainer reports that itself
        return []
    entries = ['cuDNN warning silenced (CuPy {})'.format(major)] if major >= 14 else []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from cupy.cuda import nccl
    except Exception:
        return entries
    if not getattr(nccl, 'available', True):
        entries.append('cupy.cuda.nccl imported quietly (no libnccl)')
    return entries


def applied(*blocks):
    done = ok(*blocks, '''
        import distributed
        first = list(distributed.compat.APPLIED)
        distributed.compat.apply()
        assert distributed.compat.APPLIED == first, 'apply() is not idempotent'
        import chainer
        import chainercv
        print('|'.join(first))
        ''')
    return done.stdout.strip().split('|')


def test_applied_lists_exactly_what_this_interpreter_needed():
    assert applied() == expected_applied()


def test_applied_lists_stand_ins_for_what_was_blocked():
    assert applied(BLOCK_DISTUTILS, BLOCK_PKG_RESOURCES) == expected_applied(
        blocked=('numpy.distutils', 'pkg_resources'))


def test_warns_when_chainer_came_first():
    ok('''
        import sys
        import types
        import warnings
        sys.modules['chainer'] = types.ModuleType('chainer')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import distributed  # noqa: F401
        assert any('import distributed first' in str(w.message) for w in caught), caught
        ''')


class _Buffer:
    """What unpack_params reads from: chainermn's DeviceMemory, on the CPU."""

    def __init__(self, values, dtype):
        self.bytes = numpy.concatenate([numpy.asarray(v, dtype).ravel() for v in values]).view(
            numpy.uint8)

    def to_device(self, dst, size, offset, stream=None):
        dst.view(numpy.uint8).ravel()[...] = self.bytes[offset:offset + size]


def _mixed_params():
    import chainer
    # A float16 convolution weight and a float32 BatchNorm gamma, as under mixed16.
    return [chainer.Parameter(numpy.zeros((2, 3), numpy.float16)),
            chainer.Parameter(numpy.zeros(4, numpy.float32))]


def test_chainermn_unpack_params_fails_on_numpy2_for_mixed_dtypes():
    # In a fresh interpreter that makes no communicator, chainermn's own function is in
    # place: it refuses what the stand-in converts (the next test).
    ok('import distributed\nimport numpy\n', inspect.getsource(_Buffer),
       inspect.getsource(_mixed_params), '''
        from chainermn.communicators import _memory_utility
        values = [numpy.arange(6).reshape(2, 3), numpy.arange(4) / 4]
        try:
            _memory_utility.unpack_params(_mixed_params(), 'data',
                                          _Buffer(values, numpy.float16), numpy.float16, False)
            raise AssertionError('no ValueError')
        except ValueError as e:
            assert 'copy' in str(e), e
        ''')


def test_unpack_params_stand_in_converts_mixed_dtypes():
    from distributed.comm import create_communicator
    from chainermn.communicators import _memory_utility
    create_communicator('naive')  # applies the shim, as the runtime does
    params = _mixed_params()
    values = [numpy.arange(6).reshape(2, 3), numpy.arange(4) / 4]
    _memory_utility.unpack_params(params, 'data', _Buffer(values, numpy.float16),
                                  numpy.float16, False)
    numpy.testing.assert_array_equal(params[0].array, values[0])
    numpy.testing.assert_array_equal(params[1].array, values[1])
    assert (params[0].dtype, params[1].dtype) == (numpy.float16, numpy.float32)
    # Gradients too, with zero_fill making the missing one (float32 grads, float16 buffer,
    # as comm.allreduce_dtype=float16 would send them).
    params = [chainer_param(numpy.float32) for _ in range(2)]
    params[0].grad = numpy.zeros(4, numpy.float32)
    grads = [numpy.full(4, 0.5), numpy.full(4, -2.0)]
    _memory_utility.unpack_params(params, 'grad', _Buffer(grads, numpy.float16),
                                  numpy.float16, True)
    for param, grad in zip(params, grads):
        numpy.testing.assert_array_equal(param.grad, grad)
        assert param.grad.dtype == numpy.float32


# --- chainer's reporter sums under NEP 50 -------------------------------------------------

FLOAT16_MEAN = '''
import chainer
import numpy
summary = chainer.reporter.DictSummary()
for _ in range(3000):  # a mixed16 loss over an epoch of iterations
    summary.add({'loss': chainer.Variable(numpy.array(2.1, numpy.float16))})
print(float(summary.compute_mean()['loss']))
'''


def test_chainer_sums_float16_values_in_float16_on_numpy2():
    done = ok('import distributed\n', FLOAT16_MEAN)
    assert abs(float(done.stdout) - 2.1) > 0.1, done.stdout


def test_the_runtime_makes_chainer_sum_in_float64():
    done = ok('''
        import distributed
        from distributed.config import load_config
        from distributed.runtime import create_runtime
        create_runtime(load_config(None, ['device=cpu', 'data.loader=serial']))
        assert 'chainer reporter sums in float64' in distributed.compat.APPLIED
        ''', FLOAT16_MEAN)
    assert abs(float(done.stdout) - 2.1) < 1e-3, done.stdout


def chainer_param(dtype):
    import chainer
    return chainer.Parameter(numpy.ones(4, dtype))
