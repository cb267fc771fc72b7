"""Build pure-Python wheels of chainer and chainercv into a wheel folder.

Both are published only as sdists that no longer build as they are on Python 3.11+:

* chainer 7.8.1's setup.py imports ``pkg_resources``, so it must be built with
  ``--no-build-isolation`` against a setuptools that still ships it (< 81).
* chainercv 0.13.1 ships Cython 0.28 C for ``chainercv.utils.bbox._nms_gpu_post``, which
  compiles neither on Python >= 3.11 nor against NumPy 2's C API. That extension only
  serves non-maximum suppression on the GPU (object detection); classification never
  calls it. We build the wheel without it, and ``distributed.compat`` registers a
  stand-in module that raises a clear error if it is ever called.

The wheels are pure Python (py3-none-any), so one build serves Python 3.11 and 3.12 and
can be carried to a machine without internet access (see docs/gpus.md, "The GPU check").

With ``--gpu-set`` it also fetches, for Python 3.12 on manylinux x86_64, the binary wheels
the lent GPU machines' image lacks (``GPU_IMAGE_LACKS``), removes other versions of them
from the folder and refuses a set heavier than ``GPU_SET_LIMIT`` (what travels with the
working tree to such a machine): scripts/gpu_check.sh installs exactly this set there.

Usage: python scripts/build_wheels.py [--requirements requirements.txt] [--dest .whl]
                                      [--gpu-set [--mpi-requirements requirements-mpi.txt]
                                                 [--cuda-requirements requirements-cuda.txt]]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tarfile
import tempfile

BUILT_FROM_SDIST = ('chainer', 'chainercv')
WITHOUT_EXTENSIONS = ('chainercv',)
GPU_IMAGE_LACKS = ('simplejpeg', 'mpich', 'mpi4py', 'nvidia-cudnn-frontend')
"""What the GPU machines' image (its package list: /work/.library/device/KINDS.md, 2026-11-17)
lacks besides chainer and chainercv: the JPEG decoder, an MPI runtime (MPICH's wheel: libmpi
and mpiexec) with an mpi4py known to load it (the image's mpi4py finds no libmpi), and NVIDIA's
cuDNN frontend for ``train.conv_bn=cudnn`` (distributed/cudnn/; fetched without its optional
dependencies, the CUTLASS DSL's ~200 MB, which ``import cudnn`` does not need)."""
GPU_PYTHON = '3.12'
GPU_PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64',
                 'manylinux_2_5_x86_64', 'manylinux1_x86_64')
GPU_SET_LIMIT = 64 * 2 ** 20
"""Bytes: the paths carried to a lent GPU machine beside the working tree, 64 MiB."""


def pinned_versions(requirements):
    pins = {}
    with open(requirements) as f:
        for line in f:
            m = re.match(r'^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)', line)
            if m and m.group(1).lower() in BUILT_FROM_SDIST:
                pins[m.group(1).lower()] = m.group(2)
    missing = set(BUILT_FROM_SDIST) - set(pins)
    if missing:
        raise SystemExit('{}: no exact pin (name==version) for {}'.format(
            requirements, ', '.join(sorted(missing))))
    return pins


def requirement_specs(paths, names):
    """``{name: 'name>=x,<y'}``: the requirement line of each of ``names`` in ``paths``."""
    specs = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.split('#', 1)[0].strip()
                m = re.match(r'^([A-Za-z0-9_.-]+)', line)
                if m and m.group(1).lower() in names:
                    specs[m.group(1).lower()] = line
    missing = set(names) - set(specs)
    if missing:
        raise SystemExit('{}: no requirement line for {}'.format(
            ' or '.join(paths), ', '.join(sorted(missing))))
    return specs


def wheel_name(filename):
    """The normalised distribution name of a wheel file ('mpi4py-4.1.2-cp312-...' -> 'mpi4py')."""
    return re.sub(r'[-_.]+', '_', os.path.basename(filename).split('-', 1)[0]).lower()


def wheel_set(dest):
    """``[(path, bytes)]`` of the GPU set's wheels in ``dest``; raises SystemExit naming
    what is missing or twice there (two versions of one package stop pip's install)."""
    wanted = [re.sub(r'[-_.]+', '_', n).lower() for n in BUILT_FROM_SDIST + GPU_IMAGE_LACKS]
    found = {}
    for path in sorted(glob.glob(os.path.join(dest, '*.whl'))):
        found.setdefault(wheel_name(path), []).append(path)
    missing = [name for name in wanted if name not in found]
    twice = [paths for name, paths in found.items() if name in wanted and len(paths) > 1]
    if missing:
        raise SystemExit('{}/ lacks the wheels of {}: run make gpu-wheels'.format(
            dest, ', '.join(missing)))
    if twice:
        raise SystemExit('{}/ holds {}: remove all but one version'.format(
            dest, ' and '.join(os.path.basename(p) for p in twice[0])))
    return [(found[name][0], os.path.getsize(found[name][0])) for name in wanted]


def check_size(files, limit=GPU_SET_LIMIT):
    """Total bytes of ``files`` (``[(path, bytes)]``); SystemExit when over ``limit``."""
    total = sum(size for _, size in files)
    if total > limit:
        raise SystemExit('the GPU wheel set weighs {:.1f} MiB, over the {:.0f} MiB that travel '
                         'to a GPU machine: {}'.format(
                             total / 2 ** 20, limit / 2 ** 20,
                             ', '.join('{} {:.1f} MiB'.format(os.path.basename(p), n / 2 ** 20)
                                       for p, n in files)))
    return total


def fetch_gpu_binaries(specs, dest):
    """Download the binary wheels of ``specs`` for the GPU machines into ``dest``, replacing
    any other version of them there."""
    with tempfile.TemporaryDirectory() as tmp:
        platforms = [arg for p in GPU_PLATFORMS for arg in ('--platform', p)]
        pip('download', '--disable-pip-version-check', '--no-deps', '--only-binary', ':all:',
            '--python-version', GPU_PYTHON, '--implementation', 'cp', *platforms,
            '--dest', tmp, *specs)
        for new in os.listdir(tmp):
            for old in glob.glob(os.path.join(dest, '*.whl')):
                if wheel_name(old) == wheel_name(new) and os.path.basename(old) != new:
                    os.remove(old)
            os.replace(os.path.join(tmp, new), os.path.join(dest, new))


def pip(*args):
    subprocess.check_call([sys.executable, '-m', 'pip', '--quiet'] + list(args))


def build_without_extensions(sdist, dest):
    """Run the sdist's setup.py with its ext_modules dropped: a pure-Python wheel."""
    workdir = tempfile.mkdtemp()
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter='data')
    srcdir = glob.glob(os.path.join(workdir, '*', 'setup.py'))[0]
    srcdir = os.path.dirname(srcdir)
    code = (
        'import setuptools, distutils.core, runpy, sys\n'
        '_setup = distutils.core.setup\n'
        'def setup(**kw):\n'
        '    kw.pop("ext_modules", None)\n'
        '    return _setup(**kw)\n'
        'distutils.core.setup = setuptools.setup = setup\n'
        'sys.argv = ["setup.py", "bdist_wheel", "--dist-dir", sys.argv[1]]\n'
        'runpy.run_path("setup.py", run_name="__main__")\n')
    done = subprocess.run([sys.executable, '-c', code, os.path.abspath(dest)], cwd=srcdir,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit('building a wheel from {} failed:\n{}'.format(sdist, done.stdout))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requirements', default='requirements.txt')
    parser.add_argument('--dest', default='.whl')
    parser.add_argument('--gpu-set', action='store_true',
                        help='also the binary wheels the GPU machines lack, for Python 3.12')
    parser.add_argument('--mpi-requirements', default='requirements-mpi.txt')
    parser.add_argument('--cuda-requirements', default='requirements-cuda.txt')
    parser.add_argument('--check', action='store_true',
                        help='only check the GPU set in --dest (no network): one version of '
                        'each wheel, within the size limit')
    args = parser.parse_args()
    if args.check:
        report(wheel_set(args.dest))
        return
    os.makedirs(args.dest, exist_ok=True)
    for name, version in pinned_versions(args.requirements).items():
        if glob.glob(os.path.join(args.dest, '{}-{}-py3-none-any.whl'.format(name, version))):
            continue
        print('building {}=={} into {}/'.format(name, version, args.dest), flush=True)
        spec = '{}=={}'.format(name, version)
        if name in WITHOUT_EXTENSIONS:
            with tempfile.TemporaryDirectory() as tmp:
                pip('download', '--no-deps', '--no-binary', ':all:',
                    '--no-build-isolation', '--dest', tmp, spec)
                build_without_extensions(glob.glob(os.path.join(tmp, '*.tar.gz'))[0],
                                         args.dest)
        else:
            pip('wheel', '--no-deps', '--no-build-isolation', '--wheel-dir', args.dest, spec)
    if args.gpu_set:
        specs = requirement_specs([args.requirements, args.mpi_requirements,
                                   args.cuda_requirements], GPU_IMAGE_LACKS)
        fetch_gpu_binaries([specs[name] for name in GPU_IMAGE_LACKS], args.dest)
        report(wheel_set(args.dest))


def report(files):
    total = check_size(files)
    for path, size in files:
        print('  {:6.1f} MiB  {}'.format(size / 2 ** 20, os.path.basename(path)))
    print('the GPU wheel set: {} wheels, {:.1f} MiB (limit {:.0f} MiB)'.format(
        len(files), total / 2 ** 20, GPU_SET_LIMIT / 2 ** 20))


if __name__ == '__main__':
    main()
