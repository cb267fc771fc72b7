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
can be carried to a machine without internet access (see README, "GPU machines").

Usage: python scripts/build_wheels.py [--requirements requirements.txt] [--dest .whl]
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
    args = parser.parse_args()
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


if __name__ == '__main__':
    main()
