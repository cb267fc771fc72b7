"""launch.benchmark and scripts/scaling.sh end to end at 1 and 2 ranks; bad keys refused."""
import json
import os
import re
import subprocess
import sys

import pytest

from launching import REPO, run_launcher

TINY = ['crop_size=32', 'batch_size=2', 'iterations=2', 'warmup=1', 'allreduce_rounds=2',
        'pipeline_images=3', 'pipeline_rounds=1', 'pipeline_crop=32', 'device=cpu']
KEYS = ('images_per_sec', 'ranks', 'allreduce_s', 'allreduce_raw_s', 'allreduce_ratio',
        'pipeline_img_per_sec', 'pipeline_baseline_img_per_sec', 'pipeline_speedup',
        'decode_img_per_sec', 'decode_fast_img_per_sec', 'pipeline_diff_grey',
        'pipeline_jpeg_kb')


@pytest.mark.parametrize('ranks', [1, 2])
def test_benchmark_writes_every_number(tmp_path, ranks):
    out = tmp_path / 'bench'
    done = run_launcher('launch.benchmark', TINY + ['out={}'.format(out)], ranks=ranks)
    assert done.returncode == 0, done.stderr
    assert 'img/s' in done.stdout and 'allreduce' in done.stdout
    for phase in ('training', 'gradient allreduce', 'input pipeline'):  # rank 0 says each once
        assert done.stderr.count('benchmark: ' + phase) == 1, done.stderr
    with open(os.path.join(str(out), 'benchmark.json')) as f:
        result = json.load(f)
    for key in KEYS:
        assert key in result, key
    assert result['ranks'] == ranks
    assert result['communicator'] == 'InPlaceMeanGrad'
    assert 0 < result['images_per_sec'] < 10000
    assert result['images_per_sec'] == pytest.approx(
        result['images_per_sec_per_rank'] * ranks, rel=0.5)
    assert result['allreduce_raw_s'] == min(result['allreduce_raw_flat_s'],
                                            result['allreduce_raw_arrays_s'])
    assert result['allreduce_ratio'] == pytest.approx(
        result['allreduce_s'] / result['allreduce_raw_s'])
    # ResNet-50 with 12 classes: 161 parameter arrays, about 94 MB of float32 gradients.
    assert result['allreduce_arrays'] == 161
    assert 90e6 < result['allreduce_bytes'] < 100e6
    parts = result['parts_s']
    assert all(parts[k] >= 0 for k in ('data', 'forward', 'wait', 'allreduce', 'update'))
    assert parts['forward'] < parts['step']
    assert 0 <= result['exposed_comm_share'] < 1 and 0 <= result['wait_share'] < 1
    assert 'waiting for the slowest rank' in done.stdout
    assert result['pipeline_speedup'] == pytest.approx(
        result['pipeline_img_per_sec'] / result['pipeline_baseline_img_per_sec'])
    assert result['decode_img_per_sec'] > 0 and result['decode_fast_img_per_sec'] > 0
    assert result['pipeline_vs_decode_fast'] == pytest.approx(
        result['pipeline_img_per_sec'] / result['decode_fast_img_per_sec'])
    assert 0 < result['pipeline_diff_grey'] < 20
    assert 'simplejpeg' in done.stdout and 'grey levels' in done.stdout


def test_benchmark_rejects_bad_keys(tmp_path):
    done = run_launcher('launch.benchmark', ['batch_size=0', 'out={}'.format(tmp_path)])
    assert done.returncode == 2
    assert 'batch_size must be positive' in done.stderr
    assert 'Traceback' not in done.stderr
    done = run_launcher('launch.benchmark', ['crop=64'])
    assert done.returncode == 2 and "unknown config key 'crop'" in done.stderr


@pytest.mark.parametrize('override, message', [
    ('seed=-1', 'seed must be within 0..2147483647, not -1'),     # RandomState(seed + rank)
    ('seed=4294967295', 'seed must be within 0..2147483647'),
    ('pipeline_noise=.nan', 'pipeline_noise must be a finite number, not .nan'),
    ('out={tmp}/notes.txt', 'notes.txt is a file, not a folder'),  # written after the run
    ('out={tmp}/notes.txt/bench', 'notes.txt is a file'),
])
def test_benchmark_config_refuses_what_would_fail_later(override, message, tmp_path):
    from distributed.bench.config import load_bench_config
    from distributed.config import ConfigError
    (tmp_path / 'notes.txt').write_text('not a folder')
    with pytest.raises(ConfigError) as error:
        load_bench_config(None, [override.format(tmp=tmp_path)])
    assert message in str(error.value)


def test_benchmark_config_reads_exponent_notation_and_files(tmp_path):
    from distributed.bench.config import load_bench_config
    from distributed.config import ConfigError
    path = tmp_path / 'bench.yaml'
    path.write_text('pipeline_noise: 1e1\nbatch_size: 1.6e1\nout: 0012\n')
    config = load_bench_config(str(path), ['crop_size=3.2e1'])
    assert (config.pipeline_noise, config.batch_size, config.crop_size, config.out) == (
        10.0, 16, 32, '0012')
    with pytest.raises(ConfigError, match='config file {} is a folder'.format(tmp_path)):
        load_bench_config(str(tmp_path))


def test_two_ranks_refuse_a_bad_seed_with_one_line(tmp_path):
    done = run_launcher('launch.benchmark', TINY + ['seed=-1', 'out={}'.format(tmp_path)],
                        ranks=2, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == 'error: seed must be within 0..2147483647, not -1'


def test_scaling_script_runs_every_rank_count_and_draws(tmp_path):
    venv = os.path.dirname(os.path.dirname(sys.executable))
    done = subprocess.run(['scripts/scaling.sh', '2'] + TINY, cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, OUT=str(tmp_path), VENV=venv))
    assert done.returncode == 0, done.stderr
    # The table's rows: ranks, then img/s total.
    rows = re.findall(r'^ +(\d+) +\d+\.\d', done.stdout, re.MULTILINE)
    assert rows == ['1', '2'], done.stdout
    for name in ('n1/benchmark.json', 'n2/benchmark.json', 'scaling.png', 'breakdown.png'):
        assert (tmp_path / name).exists(), name
