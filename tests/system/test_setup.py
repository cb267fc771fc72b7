"""scripts/setup.sh refuses a machine it cannot work on, with a message that says why."""
import os
import subprocess

from launching import REPO


def setup(*args, env=None):
    return subprocess.run(['bash', 'scripts/setup.sh'] + list(args), cwd=REPO,
                          env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)


def write_fake_python(tmp_path, version):
    fake = tmp_path / 'python3.9'
    fake.write_text('#!/bin/sh\n'
                    'if [ "$1" = "-c" ]; then echo {v}; exit 0; fi\n'
                    'exit 1\n'.format(v=version))
    fake.chmod(0o755)
    return str(fake)


def test_old_python_is_refused(tmp_path):
    done = setup(write_fake_python(tmp_path, '3.9.18'), str(tmp_path / 'venv'))
    assert done.returncode != 0
    assert '3.9.18 is too old' in done.stderr and '3.11' in done.stderr
    assert not (tmp_path / 'venv').exists()


def test_missing_interpreter_is_named(tmp_path):
    done = setup(str(tmp_path / 'nopython'), str(tmp_path / 'venv'))
    assert done.returncode != 0 and 'nopython' in done.stderr


def test_missing_c_compiler_is_refused(tmp_path):
    done = setup('python3', str(tmp_path / 'venv'), env={'CC': 'no-such-cc'})
    assert done.returncode != 0
    assert 'no C compiler' in done.stderr and 'build-essential' in done.stderr
    assert not (tmp_path / 'venv').exists()


def test_unknown_mpi_choice_is_refused(tmp_path):
    done = setup('python3', str(tmp_path / 'venv'), 'openmpi')
    assert done.returncode != 0 and "MPI must be 'pypi' or 'system'" in done.stderr
