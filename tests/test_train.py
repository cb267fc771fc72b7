"""launch.train end to end, through the real launcher and real MPI ranks."""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from launching import MPIEXEC, REPO, TINY, run_launcher


def test_two_ranks_train_and_only_rank_0_writes(small_sop, tmp_path):
    # Each rank runs in its own working folder with a relative `out`: whatever rank 1
    # wrote would land in its own folder.
    dirs = [tmp_path / 'rank0', tmp_path / 'rank1']
    for d in dirs:
        d.mkdir()
    args = ['-m', 'launch.train', '-c', os.path.join(REPO, 'configs/smoke.yaml'),
            'data.root=' + small_sop, 'out=out', 'train.epochs=2', 'train.log_interval=2',
            'optimizer.lr=0.1'] + TINY
    command = [MPIEXEC, '-n', '1', '-wdir', str(dirs[0]), sys.executable] + args + [
        ':', '-n', '1', '-wdir', str(dirs[1]), sys.executable] + args
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = dirs[0] / 'out'
    assert {'log', 'config.yaml', 'loss.png', 'accuracy.png', 'model.npz'} <= set(
        os.listdir(out))
    # chainer's Trainer makes its out folder on every rank; rank 1 puts nothing in it.
    others = os.listdir(dirs[1] / 'out') if (dirs[1] / 'out').exists() else []
    assert others == [], others
    assert done.stdout.count('validation/main/accuracy') == 1   # one PrintReport header
    assert done.stdout.count('test accuracy') == 1               # one summary

    log = json.loads((out / 'log').read_text())
    assert all(entry['lr'] == pytest.approx(0.1 * 2) for entry in log)  # base lr x 2 ranks
    assert any('validation/main/accuracy' in entry for entry in log)
    resolved = yaml.safe_load((out / 'config.yaml').read_text())
    assert resolved['data']['root'] == small_sop and resolved['train']['batch_size'] == 4


def test_two_ranks_train_with_loader_worker_processes(small_sop, tmp_path):
    # MultiprocessIterator workers come from a forkserver started before MPI.
    done = run_launcher('launch.train', ['-c', 'configs/smoke.yaml', 'data.root=' + small_sop,
                                         'out=' + str(tmp_path), 'train.epochs=1'] + TINY + [
                                             'data.loader=multiprocess', 'data.workers=2'],
                        ranks=2, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / 'log').read_text())
    assert log[-1]['epoch'] == 1 and 'validation/main/accuracy' in log[-1]


def test_print_config_shows_the_resolved_config():
    done = run_launcher('launch.train', ['-c', 'configs/smoke.yaml', '--print-config',
                                         'train.epochs=7'])
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config['train']['epochs'] == 7 and config['data']['root'] == 'minisop'


@pytest.mark.parametrize('override, message', [
    ('train.bogus=1', "unknown config key 'train.bogus'"),
    ('train.batch_size=big', 'train.batch_size must be an int'),
    ('optimizer.lr=-0.1', 'optimizer.lr must be zero or positive'),
    ('train.batch_size=0', 'train.batch_size must be positive'),
    ('data.root={empty}', 'has no Ebay_train.txt'),
])
def test_bad_input_stops_every_rank_with_one_message(override, message, tmp_path):
    start = time.monotonic()
    done = run_launcher('launch.train', ['-c', 'configs/smoke.yaml', 'out=' + str(tmp_path)]
                        + TINY + [override.format(empty=tmp_path)], ranks=2, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count(message) == 1, done.stderr
    assert 'Traceback' not in done.stderr
    assert time.monotonic() - start < 60
