"""scripts/gpu_check.sh as far as a CPU machine takes it, without PyPI: its plan and limits,
its one-line refusals, the wheel set's checks (scripts/build_wheels.py) and the comparison's
summary (scripts/compare_pytorch.py). CI runs the dry run itself (.ci/run)."""
import json
import os
import re
import subprocess
import sys

import pytest

from distributed.bench.config import load_bench_config, training_config
from distributed.config import ConfigError
from launching import REPO

SCRIPT = os.path.join(REPO, 'scripts', 'gpu_check.sh')
sys.path.insert(0, os.path.join(REPO, 'scripts'))
import build_wheels  # noqa: E402
import compare_pytorch  # noqa: E402

# Eight minutes on the machine with its start, which takes a minute or more.
STEPS_LIMIT_S = 390
# A GPU lease brings back at most 8 files: setup.log, summary.txt and compare.json, and one
# log for each first word of the steps' names.
FILES_BACK = 8


def gpu_check(*args, **env):
    return subprocess.run(['bash', SCRIPT, *args], env=dict(os.environ, **env), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_script_parses():
    done = subprocess.run(['bash', '-n', SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_plan_fits_the_lease_and_its_logs_come_back(tmp_path):
    done = gpu_check('--plan', LOGS=str(tmp_path / 'logs'))
    assert done.returncode == 0, done.stderr
    steps = re.findall(r'^  (\w+) +at most +(\d+)s  ', done.stdout, re.M)
    names = [name for name, _ in steps]
    assert names[0] == 'tests' and {'train_float32', 'train_mixed16', 'train_2ranks',
                                    'bench_product', 'bench_pytorch'} <= set(names)
    assert sum(int(limit) for _, limit in steps) <= STEPS_LIMIT_S, steps
    logs = {name.split('_')[0] for name in names}
    assert len(logs) + 3 <= FILES_BACK, logs
    assert 'batch 32, 64, 256' in done.stdout
    assert not (tmp_path / 'logs').exists()


def test_without_a_gpu_it_stops_in_one_line_and_writes_nothing(tmp_path):
    done = gpu_check(PYTHON=sys.executable, WORK=str(tmp_path / 'work'),
                     LOGS=str(tmp_path / 'logs'))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith('gpu_check: no GPU visible: CuPy cannot be imported')
    assert done.stderr.count('\n') == 1 and done.stdout == ''
    assert not (tmp_path / 'work').exists() and not (tmp_path / 'logs').exists()


def test_cupy_without_a_device_stops_it_in_one_line(tmp_path):
    # CuPy installed on a machine whose GPU is gone: CUDA's error, in the one line.
    (tmp_path / 'cupy' / 'cuda').mkdir(parents=True)
    (tmp_path / 'cupy' / '__init__.py').write_text(
        "from cupy import cuda  # noqa\n__version__ = '14.2.0'\n")
    (tmp_path / 'cupy' / 'cuda' / '__init__.py').write_text(
        'def _no_device():\n'
        "    raise RuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')\n"
        'class runtime:\n'
        '    getDeviceCount = staticmethod(_no_device)\n')
    done = gpu_check(PYTHON=sys.executable, PYTHONPATH=str(tmp_path),
                     WORK=str(tmp_path / 'work'))
    assert done.returncode == 2
    assert done.stderr == ('gpu_check: no GPU visible: CuPy 14.2.0 sees no GPU (RuntimeError: '
                           'cudaErrorNoDevice: no CUDA-capable device is detected)\n')


@pytest.mark.parametrize('args, env, message', [
    (['--fast'], {}, "gpu_check: unknown argument '--fast'"),
    ([], {'TF32': 'yes'}, "gpu_check: TF32 must be 0 or 1, not 'yes'"),
    (['--dry-run'], {'PYTHON': '/nonexistent/python3.12'},
     "gpu_check: no Python interpreter '/nonexistent/python3.12'"),
])
def test_bad_input_is_refused_in_one_line(args, env, message, tmp_path):
    done = gpu_check(*args, WORK=str(tmp_path / 'work'), **env)
    assert done.returncode == 2
    assert done.stderr.startswith(message) and done.stderr.count('\n') == 1, done.stderr


@pytest.mark.skipif(sys.version_info[:2] == (3, 12),
                    reason='the dry run refuses every Python but 3.12, the GPU machines\' one: '
                    'on 3.12 there is nothing to refuse')
def test_the_dry_run_refuses_another_python(tmp_path):
    done = gpu_check('--dry-run', PYTHON=sys.executable, WORK=str(tmp_path / 'work'))
    assert done.returncode == 2
    assert 'is Python {}.{}'.format(*sys.version_info) in done.stderr
    assert not (tmp_path / 'work').exists()


def wheels(folder, *names, size=1):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b'\0' * size)
    return str(folder)


GPU_SET = ('chainer-7.8.1-py3-none-any.whl', 'chainercv-0.13.1-py3-none-any.whl',
           'simplejpeg-1.9.0-cp312-cp312-manylinux_2_17_x86_64.whl',
           'mpich-5.0.2-py3-none-manylinux_2_28_x86_64.whl',
           'mpi4py-4.1.2-cp312-cp312-manylinux1_x86_64.whl',
           'nvidia_cudnn_frontend-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl')


def test_wheel_set_names_what_is_missing_or_twice(tmp_path):
    with pytest.raises(SystemExit, match='lacks the wheels of mpich: run make gpu-wheels'):
        build_wheels.wheel_set(wheels(tmp_path / 'a', *GPU_SET[:3], *GPU_SET[4:]))
    with pytest.raises(SystemExit, match='lacks the wheels of nvidia_cudnn_frontend'):
        build_wheels.wheel_set(wheels(tmp_path / 'd', *GPU_SET[:5]))
    with pytest.raises(SystemExit, match='holds mpi4py-4.0.0-.*whl and mpi4py-4.1.2-.*whl'):
        build_wheels.wheel_set(wheels(tmp_path / 'b', *GPU_SET,
                                      'mpi4py-4.0.0-cp312-cp312-manylinux1_x86_64.whl'))
    found = build_wheels.wheel_set(wheels(tmp_path / 'c', *GPU_SET, 'PyYAML-6.0-any.whl'))
    assert [os.path.basename(path) for path, _ in found] == list(GPU_SET)


def test_wheel_set_over_the_limit_is_refused(tmp_path):
    files = build_wheels.wheel_set(wheels(tmp_path, *GPU_SET, size=1000))
    assert build_wheels.check_size(files, limit=6000) == 6000
    with pytest.raises(SystemExit, match=r'weighs 0\.0 MiB, over the 0 MiB .*mpich-5\.0\.2'):
        build_wheels.check_size(files, limit=5999)
    assert build_wheels.GPU_SET_LIMIT == 64 * 2 ** 20


def test_wheel_set_check_on_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'build_wheels.py'),
                           '--check', '--dest', wheels(tmp_path, *GPU_SET[1:])],
                          capture_output=True, text=True)
    assert done.returncode == 1 and 'lacks the wheels of chainer' in done.stderr


def test_requirement_specs_come_from_the_requirement_files(tmp_path):
    specs = build_wheels.requirement_specs(
        [os.path.join(REPO, name) for name in ('requirements.txt', 'requirements-mpi.txt',
                                               'requirements-cuda.txt')],
        build_wheels.GPU_IMAGE_LACKS)
    assert specs['simplejpeg'].startswith('simplejpeg==')
    assert specs['nvidia-cudnn-frontend'].startswith('nvidia-cudnn-frontend==')
    assert specs['mpi4py'].startswith('mpi4py>=4') and specs['mpich'].startswith('mpich')
    with pytest.raises(SystemExit, match='no requirement line for mpich'):
        build_wheels.requirement_specs([os.path.join(REPO, 'requirements.txt')], ('mpich',))


def product_result(images_per_sec, parts):
    return {'images_per_sec': images_per_sec, 'ranks': 1,
            'parts_s': dict(parts, step=sum(parts.values()), wait=0.0, allreduce=0.0)}


def write_runs(folder, torch_rows, product_rows):
    parts = {'data': 0.001, 'forward': 0.01, 'backward': 0.02, 'update': 0.004}
    if torch_rows:
        runs = [{'precision': p, 'batch': b, 'images_per_sec': rate,
                 'images_per_sec_unsynced': rate * 1.1, 'parts_s': parts}
                for (p, b), rate in torch_rows.items()]
        (folder / 'pytorch.json').write_text(json.dumps({'tf32': True, 'runs': runs}))
    for (p, b), rate in product_rows.items():
        (folder / '{}_b{}'.format(p, b)).mkdir()
        (folder / '{}_b{}'.format(p, b) / 'benchmark.json').write_text(
            json.dumps(product_result(rate, parts)))


def summary(folder, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'compare_pytorch.py'),
                           '--summary', str(folder), *args], capture_output=True, text=True)


def test_comparison_summary(tmp_path):
    write_runs(tmp_path, {('float32', 32): 1000.0, ('float32', 256): 8000.0,
                          ('mixed16', 32): 1500.0, ('mixed16', 256): 8000.0},
               {('float32', 32): 500.0, ('mixed16', 256): 12000.0})
    rows = compare_pytorch.comparison_rows(str(tmp_path))
    assert [(r['precision'], r['batch']) for r in rows] == [
        ('float32', 32), ('float32', 256), ('mixed16', 32), ('mixed16', 256)]
    assert rows[0]['ratio'] == pytest.approx(0.5) and rows[3]['ratio'] == pytest.approx(1.5)
    assert rows[1]['product'] is None and rows[1]['ratio'] is None

    done = summary(tmp_path, '--tf32', '0')
    assert done.returncode == 0, done.stderr
    assert 'TF32 off on both sides' in done.stdout
    assert re.search(r'^float32 +32 +500\.0 +1000\.0 +0\.50 ', done.stdout, re.M)
    assert re.search(r'^float32 +256 +n/a +8000\.0 +n/a ', done.stdout, re.M)
    assert 'mixed16 b256: product data 1.0 forward 10.0 backward 20.0 update 4.0' in done.stdout
    saved = json.loads((tmp_path / 'compare.json').read_text())
    assert saved['tf32'] is False and saved['rows'][3]['ratio'] == pytest.approx(1.5)


def test_comparison_summary_keeps_the_product_when_pytorch_failed(tmp_path):
    write_runs(tmp_path, {}, {('float32', 64): 700.0})
    done = summary(tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'TF32 on on both sides' in done.stdout
    assert re.search(r'^float32 +64 +700\.0 +n/a +n/a ', done.stdout, re.M)
    assert 'float32 b64: product data 1.0 forward 10.0 backward 20.0 update 4.0 | pytorch n/a' \
        in done.stdout


def test_comparison_summary_without_any_run_says_so(tmp_path):
    done = summary(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith('compare_pytorch: no comparison in {}'.format(tmp_path))
    assert done.stderr.count('\n') == 1


def test_the_benchmark_trains_in_the_precision_asked():
    assert training_config(load_bench_config(overrides=['dtype=mixed16'])).train.dtype == \
        'mixed16'
    assert training_config(load_bench_config()).train.dtype == 'float32'
    with pytest.raises(ConfigError, match='mixed16'):
        load_bench_config(overrides=['dtype=float16'])
