"""launch.train end to end, through the real launcher and real MPI ranks."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from launching import MPIEXEC, REPO, TINY, descendants, process_tree, run_launcher


def loader_workers(job):
    """{rank pid: pids of its loader's worker processes} under the process ``job``.

    The ranks are the ``-m launch.train`` processes below it; a worker is a child of the
    forkserver that its rank started (the forkserver is the rank's child)."""
    tree = process_tree()
    # A rank's child between its fork and its exec (the forkserver, Python's resource
    # tracker) still shows the rank's command line for a moment: a rank's parent is not one.
    ranks = [pid for pid in descendants(tree, job)[1:] if ' -m launch.train ' in tree[pid][1]
             and ' -m launch.train ' not in tree.get(tree[pid][0], (0, ''))[1]]
    servers = {pid: rank for pid, (parent, command) in tree.items() for rank in ranks
               if parent == rank and 'multiprocessing.forkserver' in command}
    workers = {rank: set() for rank in ranks}
    for pid, (parent, _) in tree.items():
        if parent in servers:
            workers[servers[parent]].add(pid)
    return workers


def test_two_ranks_train_with_loader_workers_and_only_rank_0_writes(small_sop, tmp_path):
    # Each rank runs in its own working folder with a relative `out`: whatever rank 1
    # wrote would land in its own folder. Batches come from MultiprocessIterator workers
    # (forkserver children, the forkserver started before MPI); while the job runs, each
    # rank's workers are looked for in the process tree: with the serial loader there are
    # none (only the forkserver's start-up check, one process for a moment).
    dirs = [tmp_path / 'rank0', tmp_path / 'rank1']
    for d in dirs:
        d.mkdir()
    args = ['-m', 'launch.train', '-c', os.path.join(REPO, 'configs/smoke.yaml'),
            'data.root=' + small_sop, 'out=out', 'train.epochs=1.5', 'train.log_interval=3',
            'optimizer.lr=0.1'] + TINY + ['data.loader=multiprocess', 'data.workers=2']
    command = [MPIEXEC, '-n', '1', '-wdir', str(dirs[0]), sys.executable] + args + [
        ':', '-n', '1', '-wdir', str(dirs[1]), sys.executable] + args
    with tempfile.TemporaryFile('w+') as stdout, tempfile.TemporaryFile('w+') as stderr:
        proc = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS='1',
                                                  PYTHONPATH=REPO),
                                stdout=stdout, stderr=stderr, text=True)
        most = {}  # rank pid: the most loader workers seen at once
        end = time.monotonic() + 300
        while proc.poll() is None:
            if time.monotonic() > end:
                proc.kill()
                proc.wait()
                pytest.fail('the job took over 300 s')
            for rank, found in loader_workers(proc.pid).items():
                most[rank] = max(most.get(rank, 0), len(found))
            time.sleep(0.1)
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    assert proc.returncode == 0, err_text[-3000:]
    assert len(most) == 2 and all(n >= 2 for n in most.values()), (
        'the most loader workers seen at once, per rank pid: {}'.format(most))

    out = dirs[0] / 'out'
    assert {'log', 'config.yaml', 'loss.png', 'accuracy.png', 'model.npz'} <= set(
        os.listdir(out))
    # chainer's Trainer makes its out folder on every rank; rank 1 puts nothing in it.
    others = os.listdir(dirs[1] / 'out') if (dirs[1] / 'out').exists() else []
    assert others == [], others
    assert out_text.count('validation/main/accuracy') == 1   # one PrintReport header
    assert out_text.count('test accuracy') == 1               # one summary
    assert out_text.startswith('runtime: 2 rank(s) on 1 node(s), one CPU each')

    log = json.loads((out / 'log').read_text())
    # The run ends mid-interval (1.5 epochs, a log line every 3 iterations): the last log
    # line and the last evaluation still come at its last iteration, and the closing line
    # quotes them.
    last = log[-1]
    assert 'validation/main/accuracy' in last and last['iteration'] % 3 != 0, log
    assert re.search(r'test accuracy {:.3f} \(loss {:.3f}\) after 1\.\d\d epochs \({} '
                     r'iterations\)'.format(last['validation/main/accuracy'],
                                            last['validation/main/loss'], last['iteration']),
                     out_text), out_text
    assert all(entry['lr'] == pytest.approx(0.1 * 2) for entry in log)  # base lr x 2 ranks
    assert any('validation/main/accuracy' in entry for entry in log)
    resolved = yaml.safe_load((out / 'config.yaml').read_text())
    assert resolved['data']['root'] == small_sop and resolved['train']['batch_size'] == 4
    assert resolved['data']['loader'] == 'multiprocess'


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
    ('train.seed=-1', 'train.seed must be within 0..2147483647, not -1'),
    ('train.stall_timeout=.inf', 'train.stall_timeout must be a finite number, not .inf'),
    ('optimizer.lr=.nan', 'optimizer.lr must be a finite number, not .nan'),
    ('out={empty}/notes.txt', 'notes.txt is a file, not a folder'),
    ('train.conv_bn=cudnn', 'train.conv_bn=cudnn runs on GPUs, but this rank computes on the CPU'),
])
def test_bad_input_stops_every_rank_with_one_message(override, message, tmp_path):
    (tmp_path / 'notes.txt').write_text('not a folder')
    start = time.monotonic()
    done = run_launcher('launch.train', ['-c', 'configs/smoke.yaml', 'out=' + str(tmp_path)]
                        + TINY + [override.format(empty=tmp_path)], ranks=2, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count(message) == 1, done.stderr
    assert 'Traceback' not in done.stderr
    assert time.monotonic() - start < 60


@pytest.mark.parametrize('config, message', [
    ('{tmp}', 'is a folder, not a YAML file'),
    ('{tmp}/utf16.yaml', 'is not UTF-8 text (it holds zero bytes: UTF-16 without a '
     'byte-order mark'),
])
def test_a_config_file_that_does_not_read_stops_every_rank_in_one_line(config, message,
                                                                       tmp_path):
    (tmp_path / 'utf16.yaml').write_bytes('train:\n  epochs: 3\n'.encode('utf-16-le'))
    done = run_launcher('launch.train', ['-c', config.format(tmp=tmp_path)], ranks=2,
                        timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count(message) == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
