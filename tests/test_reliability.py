"""Never lose a run: real `mpiexec -n 2` jobs, real signals, real broken files.

Each scenario launches ``launch.train`` (or a small MPI script) on 2 ranks of a tiny SOP
tree and checks what a user would see: the exit code, how long it took, the message, the
files on disk and, for resumes, the weights compared with numpy.
"""
import io
import os
import pickle
import shutil
import signal
import subprocess
import textwrap
import time

import numpy
import pytest
from PIL import Image

from jobs import (DEADLINE, assert_stopped_by, finish, rank_pids, read_until, start, train,
                  wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tree(tiny_sop):
    return tiny_sop


def arrays(path):
    """The checkpoint's weights and momentum (shared by the ranks) and each rank's own
    BatchNorm statistics (``ranks/<r>/state``)."""
    with numpy.load(str(path)) as f:
        found = {k: f[k] for k in f.files
                 if k.startswith(('updater/model:main/', 'updater/optimizer:main/'))}
        for key in f.files:
            if key.startswith('ranks/'):
                state = pickle.loads(f[key].tobytes())
                for name, value in state['persistent'].items():
                    found[key.rsplit('/', 1)[0] + '/persistent/' + name] = value
    return found


def assert_same_weights(expected_path, got_path):
    expected, got = arrays(expected_path), arrays(got_path)
    assert expected.keys() == got.keys()
    assert any('/v' in k for k in expected), 'momentum missing from the checkpoint'
    rank1 = [k for k in expected if k.startswith('ranks/1/persistent/') and 'avg_mean' in k]
    assert rank1, 'rank 1\'s BatchNorm statistics missing from the checkpoint'
    # Rank 1's statistics are its own (another shard), not a copy of the model's (rank 0's).
    assert any(not numpy.array_equal(expected[k], expected[k.replace('ranks/1/', 'ranks/0/')])
               for k in rank1)
    for key in expected:
        numpy.testing.assert_array_equal(expected[key], got[key], err_msg=key)


@pytest.fixture(scope='module')
def straight(tree, tmp_path_factory):
    """3 epochs (9 iterations) without interruption: the reference for every resume."""
    out = tmp_path_factory.mktemp('straight')
    code, output = finish(train(tree, out, 'train.epochs=3'))
    assert code == 0, output
    return out


def test_checkpoints_every_interval_and_keep(straight, tree, tmp_path, record_property):
    # The straight run used interval 0: one checkpoint per epoch end, the newest 3 kept.
    assert sorted(p.name for p in straight.glob('snapshot_iter_*.npz')) == [
        'snapshot_iter_3.npz', 'snapshot_iter_6.npz', 'snapshot_iter_9.npz']
    assert not list(straight.glob('tmp*')), 'a temporary file was left behind'


def test_resume_auto_after_an_epoch_is_exact(straight, tree, tmp_path, record_property):
    code, output = finish(train(tree, tmp_path, 'train.epochs=1', 'checkpoint.keep=1'))
    assert code == 0, output
    assert [p.name for p in tmp_path.glob('snapshot_iter_*')] == ['snapshot_iter_3.npz']
    code, output = finish(train(tree, tmp_path, 'train.epochs=3', 'resume=auto'))
    assert code == 0, output
    assert 'resumed from {} at iteration 3'.format(tmp_path / 'snapshot_iter_3.npz') in output
    assert_same_weights(straight / 'snapshot_iter_9.npz', tmp_path / 'snapshot_iter_9.npz')
    import json
    log = json.loads((tmp_path / 'log').read_text())
    assert [e['epoch'] for e in log] == [1, 2, 3], 'the log does not continue the first run'


def test_sigterm_to_mpiexec_then_sigint_to_one_rank_then_resume_is_exact(
        straight, tree, tmp_path, record_property):
    # 1. Pre-emption: SIGTERM to mpiexec once training runs (first interval checkpoint).
    # Hydra passes the SIGTERM on at once. (Open MPI's mpiexec passes it on after
    # odls_base_sigkill_timeout seconds and kills the ranks as long after that: README.)
    proc = train(tree, tmp_path, 'train.epochs=3', 'checkpoint.interval=2')
    wait_for(tmp_path / 'snapshot_iter_2.npz', proc)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    code, output = finish(proc)
    seconds = time.time() - sent
    record_property('sigterm', (code, round(seconds, 1)))
    assert_stopped_by(signal.SIGTERM, code, output)
    assert seconds < DEADLINE
    stopped_at = int(output.split('stopped by SIGTERM at iteration ')[1].split(';')[0])
    assert (tmp_path / 'snapshot_iter_{}.npz'.format(stopped_at)).exists()
    assert stopped_at < 9

    # 2. SIGINT to rank 1 alone: the ranks agree, both stop after the same iteration.
    proc = train(tree, tmp_path, 'train.epochs=3', 'checkpoint.interval=2', 'resume=auto')
    head = read_until(proc, 'resumed from')
    pids = rank_pids(proc.pid)
    assert sorted(pids) == [0, 1]
    sent = time.time()
    os.kill(pids[1], signal.SIGINT)
    code, output = finish(proc)
    output = head + output
    seconds = time.time() - sent
    record_property('sigint_rank1', (code, round(seconds, 1)))
    assert_stopped_by(signal.SIGINT, code, output)
    assert seconds < DEADLINE

    # 3. Resume to the end: the same weights, momentum and every rank's BatchNorm
    # statistics as the uninterrupted run.
    code, output = finish(train(tree, tmp_path, 'train.epochs=3', 'resume=auto'))
    assert code == 0, output
    assert 'resumed from' in output
    assert_same_weights(straight / 'snapshot_iter_9.npz', tmp_path / 'snapshot_iter_9.npz')


def test_resume_from_a_given_checkpoint_and_a_missing_one(straight, tree, tmp_path):
    # A later checkpoint of an abandoned run in out must not be taken up by resume=auto.
    shutil.copy(straight / 'snapshot_iter_9.npz', tmp_path / 'snapshot_iter_12.npz')
    code, output = finish(train(tree, tmp_path, 'train.epochs=3',
                                'resume={}'.format(straight / 'snapshot_iter_6.npz')))
    assert code == 0, output
    assert 'at iteration 6' in output and 'snapshot_iter_12.npz' in output
    assert_same_weights(straight / 'snapshot_iter_9.npz', tmp_path / 'snapshot_iter_9.npz')
    assert (tmp_path / 'snapshot_iter_12.npz.superseded').exists()
    code, output = finish(train(tree, tmp_path, 'train.epochs=3', 'resume=auto'))
    assert code == 0 and 'resumed from {} at iteration 9'.format(
        tmp_path / 'snapshot_iter_9.npz') in output, output
    assert 'starting afresh' not in output
    code, output = finish(train(tree, tmp_path, 'train.epochs=1'))
    assert code == 0 and 'starting afresh in {}, which holds checkpoints of an earlier run ' \
        '(up to snapshot_iter_9.npz)'.format(tmp_path) in output, output
    code, output = finish(train(tree, tmp_path / 'x', 'resume={}'.format(tmp_path / 'no.npz')))
    assert code == 2, output
    assert 'no such checkpoint file' in output and 'Traceback' not in output


def test_sigkill_of_one_rank_ends_the_job(tree, tmp_path, record_property):
    proc = train(tree, tmp_path, 'train.epochs=20', 'checkpoint.interval=2')
    wait_for(tmp_path / 'snapshot_iter_2.npz', proc)
    pids = rank_pids(proc.pid)
    sent = time.time()
    os.kill(pids[1], signal.SIGKILL)
    code, output = finish(proc, timeout=DEADLINE + 30)
    seconds = time.time() - sent
    record_property('sigkill_rank1', (code, round(seconds, 1)))
    assert code != 0
    assert seconds < DEADLINE
    # mpiexec names the process (Hydra by its id, which the job's first line maps to a
    # rank; Open MPI by its rank).
    assert 'signal 9' in output, output
    assert 'PID {}'.format(pids[1]) in output or 'rank 1 ' in output, output
    assert '1 pid {} on'.format(pids[1]) in output


def test_an_uncaught_exception_on_one_rank_ends_the_job(tmp_path, record_property):
    script = tmp_path / 'fail.py'
    script.write_text(textwrap.dedent('''
        import distributed
        from distributed.config import load_config
        from distributed.runtime import create_runtime
        runtime = create_runtime(load_config(None, ['device=cpu', 'data.loader=serial']))
        if runtime.rank == 1:
            raise ValueError('rank one broke')
        runtime.comm.mpi_comm.barrier()  # rank 0 would wait here forever
    '''))
    began = time.time()
    code, output = finish(start([str(script)]), timeout=DEADLINE + 30)
    seconds = time.time() - began
    record_property('exception_rank1', (code, round(seconds, 1)))
    assert code != 0
    assert seconds < DEADLINE
    assert 'rank one broke' in output and 'Uncaught exception on rank 1' in output, output


def save(img, path, fmt='JPEG', **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope='module')
def bad_tree(tree, tmp_path_factory):
    """The tiny tree with odd but decodable train images and three undecodable ones."""
    root = tmp_path_factory.mktemp('bad') / 'sop'
    subprocess.run(['cp', '-r', str(tree), str(root)], check=True)
    train = [line.split()[3] for line in (root / 'Ebay_train.txt').read_text().splitlines()[1:]]
    rgb = Image.new('RGB', (50, 40), (200, 30, 30))
    odd = [rgb.convert('L'), rgb.convert('CMYK'), rgb.convert('P'), rgb.convert('RGBA'),
           Image.new('RGB', (3, 2), (0, 90, 0)), Image.new('RGB', (20, 24), (9, 9, 9))]
    for img, rel in zip(odd, train):
        fmt = 'PNG' if img.mode in ('RGBA', 'P') else 'JPEG'
        save(img, root / rel, fmt)
    good = (root / train[6]).read_bytes()
    broken = {train[7]: good[:len(good) // 3], train[8]: b'', train[9]: b'not an image\n'}
    for rel, data in broken.items():
        (root / rel).write_bytes(data)
    return root, sorted(broken)


def test_bad_images_are_named_and_skipped(bad_tree, tmp_path, record_property):
    root, broken = bad_tree
    code, output = finish(train(root, tmp_path, 'train.epochs=1'))
    record_property('bad_skip', code)
    assert code == 0, output
    assert 'skipped 3 unreadable image(s)' in output, output
    for rel in broken:
        assert 'skipping unreadable image {}'.format(root / rel) in output
        assert str(root / rel) in output.split('skipped 3 unreadable image(s)')[1]
    assert 'Traceback' not in output


@pytest.mark.parametrize('loader', ['serial', 'multiprocess'])
def test_bad_image_with_error_policy_stops_the_job_naming_it(bad_tree, tmp_path, loader,
                                                             record_property):
    # With loader worker processes the error surfaces in the iterator's prefetch thread.
    root, broken = bad_tree
    began = time.time()
    code, output = finish(train(root, tmp_path, 'train.epochs=1', 'data.on_bad_image=error',
                                'data.loader=' + loader, 'data.workers=1'), timeout=DEADLINE * 2)
    record_property('bad_error_' + loader, (code, round(time.time() - began, 1)))
    assert code == 3, output
    assert 'cannot be decoded' in output and any(str(root / r) in output for r in broken)
    assert 'on_bad_image=skip' in output


def test_missing_files_fail_fast_naming_them(tree, tmp_path, record_property):
    root = tmp_path / 'sop'
    subprocess.run(['cp', '-r', str(tree), str(root)], check=True)
    listed = [line.split()[3] for line in (root / 'Ebay_train.txt').read_text().splitlines()[1:]]
    for rel in listed[:12]:
        os.remove(root / rel)
    began = time.time()
    code, output = finish(train(root, tmp_path / 'out', 'train.epochs=1'))
    record_property('missing', (code, round(time.time() - began, 1)))
    assert code == 2, output
    assert '12 images listed in the index files' in output
    named = output.split('are missing, e.g. ')[1].split('. Restore')[0].split(', ')
    assert len(named) == 10 and set(named) <= set(listed[:12])
    assert 'Traceback' not in output
    assert not (tmp_path / 'out' / 'log').exists()
