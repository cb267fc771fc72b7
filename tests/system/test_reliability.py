"""Never lose a run: real `mpiexec -n 2` jobs, real signals, real broken files.

Each scenario launches ``launch.train`` (or a small MPI script) on 2 ranks of a tiny SOP
tree and checks what a user would see: the exit code, how long it took, the message, the
files on disk and, for resumes, the weights compared with numpy.
"""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time

import numpy
import pytest
import yaml
from PIL import Image

from jobs import (DEADLINE, TINY, assert_stopped_by, finish, rank_pids, read_until, start,
                  train, wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tree(tiny_sop):
    return tiny_sop


def arrays(path):
    """The checkpoint's weights, momentum and BatchNorm statistics (averaged over the
    ranks before the write): the model and the optimizer."""
    with numpy.load(str(path), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith(
            ('updater/model:main/', 'updater/optimizer:main/'))}


def assert_same_weights(expected_path, got_path):
    """Weights and momentum bitwise; the running statistics to float tolerance: they are
    averaged over the ranks at each checkpoint, which a stop adds (the same mean, summed
    in another order)."""
    expected, got = arrays(expected_path), arrays(got_path)
    assert expected.keys() == got.keys()
    assert any('/v' in k for k in expected), 'momentum missing from the checkpoint'
    statistics = [k for k in expected if k.endswith(('/avg_mean', '/avg_var'))]
    assert statistics, 'BatchNorm statistics missing from the checkpoint'
    for key in expected:
        if key in statistics:
            numpy.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-7,
                                          err_msg=key)
        else:
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
    # Nothing in them needs pickle (chainer's writer would store a None as an object array).
    for path in straight.glob('snapshot_iter_*.npz'):
        with numpy.load(str(path), allow_pickle=False) as f:
            assert not [key for key in f.files if f[key].dtype.hasobject], path


def test_resume_auto_after_an_epoch_is_exact(straight, tree, tmp_path, record_property):
    code, output = finish(train(tree, tmp_path, 'train.epochs=1', 'checkpoint.keep=1'))
    assert code == 0, output
    assert [p.name for p in tmp_path.glob('snapshot_iter_*')] == ['snapshot_iter_3.npz']
    code, output = finish(train(tree, tmp_path, 'train.epochs=3', 'resume=auto'))
    assert code == 0, output
    assert 'resumed from {} at iteration 3'.format(tmp_path / 'snapshot_iter_3.npz') in output
    assert_same_weights(straight / 'snapshot_iter_9.npz', tmp_path / 'snapshot_iter_9.npz')
    log = json.loads((tmp_path / 'log').read_text())
    assert [e['epoch'] for e in log] == [1, 2, 3], 'the log does not continue the first run'


def test_sigterm_to_mpiexec_then_sigint_to_one_rank_then_resume_is_exact(
        straight, tree, tmp_path, record_property):
    # 1. Pre-emption: SIGTERM to mpiexec once training runs (first interval checkpoint).
    # Hydra passes the SIGTERM on at once. (Open MPI's mpiexec passes it on after
    # odls_base_sigkill_timeout seconds and kills the ranks as long after that:
    # docs/checkpoints.md.)
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

    # 3. Resume to the end: the same weights, momentum and BatchNorm statistics as the
    # uninterrupted run.
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
    # A fresh start puts the earlier run's checkpoints aside, so that resume=auto (highest
    # iteration) takes this run's own.
    code, output = finish(train(tree, tmp_path, 'train.epochs=1'))
    assert code == 0 and 'starting afresh in {}: renamed the checkpoints of an earlier run ' \
        'there to *.superseded'.format(tmp_path) in output, output
    assert (tmp_path / 'snapshot_iter_9.npz.superseded').exists()
    code, output = finish(train(tree, tmp_path, 'train.epochs=2', 'resume=auto'))
    assert code == 0 and 'resumed from {} at iteration 3'.format(
        tmp_path / 'snapshot_iter_3.npz') in output, output
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


def test_a_full_disk_on_one_rank_ends_the_job_in_one_line(tmp_path):
    script = tmp_path / 'full.py'
    script.write_text(textwrap.dedent('''
        import errno
        import distributed
        from distributed.config import load_config
        from distributed.runtime import create_runtime
        runtime = create_runtime(load_config(None, ['device=cpu', 'data.loader=serial']))
        if runtime.rank == 1:
            raise OSError(errno.ENOSPC, 'No space left on device', '/out/snapshot_iter_3.npz')
        runtime.comm.mpi_comm.barrier()  # rank 0 would wait here forever
    '''))
    began = time.time()
    code, output = finish(start([str(script)]), timeout=DEADLINE + 30)
    assert code != 0 and time.time() - began < DEADLINE
    assert "error: rank 1: [Errno 28] No space left on device: '/out/snapshot_iter_3.npz'; " \
        'the files written before are intact' in output, output
    assert 'Traceback' not in output


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
    assert 'on_bad_image=skip' in output and 'Traceback' not in output, output


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


def error_line(code, output):
    """The one line a refused job says (exit 2, no traceback)."""
    assert code == 2, output
    assert 'Traceback' not in output, output
    errors = [line for line in output.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, output
    return errors[0]


def test_resume_auto_skips_checkpoints_that_do_not_read(straight, tree, tmp_path):
    """Newer checkpoints cut short by an interrupted copy, empty, zero bytes, with an
    array that fails its CRC, a folder of that name, a member that is not an array: each
    is skipped with its reason, and the run resumes from the newest intact one, exactly.
    (Not readable for lack of permission: tests/distributed/checkpoint/test_resume.py, as
    root reads all.)"""
    from files import DAMAGES, damage
    shutil.copy(straight / 'snapshot_iter_3.npz', tmp_path)
    damaged = []
    for iteration, how in enumerate(DAMAGES, start=4):
        damaged.append(tmp_path / 'snapshot_iter_{}.npz'.format(iteration))
        damage(straight / 'snapshot_iter_6.npz', damaged[-1], how)
    code, output = finish(train(tree, tmp_path, 'train.epochs=3', 'resume=auto'))
    assert code == 0, output
    skipped = [line for line in output.splitlines() if line.startswith('resume=auto: skipped')]
    assert [line.split('does not read: ')[1].split()[0] for line in skipped] == [
        str(path) for path in reversed(damaged)], output
    for text in ('(BadZipFile: File is not a zip file)', 'is not an .npz archive (empty)',
                 'Bad CRC-32', 'cannot be read (Is a directory)', 'is not a numpy array'):
        assert text in '\n'.join(skipped), output
    assert 'resumed from {} at iteration 3'.format(tmp_path / 'snapshot_iter_3.npz') in output
    assert 'Traceback' not in output
    assert_same_weights(straight / 'snapshot_iter_9.npz', tmp_path / 'snapshot_iter_9.npz')


def test_resume_from_a_damaged_file_says_it_is_damaged(straight, tree, tmp_path):
    from files import damage
    for how, text in (('truncated', 'is cut short or damaged: its zip directory does not '
                                    'read (BadZipFile: File is not a zip file)'),
                      ('crc', 'is cut short or damaged: ')):
        path = tmp_path / '{}.npz'.format(how)
        damage(straight / 'snapshot_iter_6.npz', path, how)
        code, output = finish(train(tree, tmp_path / 'out', 'train.epochs=3',
                                    'resume={}'.format(path)))
        assert error_line(code, output).startswith(
            'error: resume={}: {} {}'.format(path, path, text)), output
        assert not (tmp_path / 'out' / 'log').exists()


def test_resume_refuses_another_network_and_says_when_there_is_nothing_to_resume(
        tree, tmp_path):
    """chainer's deserializer takes a resnet50's arrays out of a resnet101 checkpoint and
    ignores the rest: the run is refused, naming the key and both values."""
    code, output = finish(train(tree, tmp_path / 'new', 'train.epochs=1', 'resume=auto'))
    assert code == 0, output
    assert 'resume=auto: {} does not exist yet; starting afresh'.format(
        tmp_path / 'new') in output, output
    code, output = finish(train(tree, tmp_path, 'train.epochs=1', 'model.arch=resnet101',
                                'resume=auto'))
    assert code == 0, output
    assert 'resume=auto: {} holds no checkpoint (snapshot_iter_<N>.npz); starting ' \
        'afresh'.format(tmp_path) in output, output
    code, output = finish(train(tree, tmp_path, 'train.epochs=2', 'resume=auto'))
    line = error_line(code, output)
    assert line.startswith('error: checkpoint {} cannot resume in this run, which changes '
                           'what it means: model.arch resnet101 -> resnet50 (the network'
                           .format(tmp_path / 'snapshot_iter_3.npz')), line
    assert 'resumed from' not in output
    # The folder still says how its checkpoints were made.
    assert yaml.safe_load((tmp_path / 'config.yaml').read_text())['model']['arch'] == \
        'resnet101'


def test_a_resume_at_or_past_the_end_trains_nothing(straight, tree, tmp_path):
    """chainer's epoch trigger fires only as a run crosses its end: a finished run resumed
    with fewer epochs trained on, checkpointing every iteration, and pushed the finished
    run's checkpoints out."""
    for name in ('snapshot_iter_9.npz', 'model.npz', 'log'):
        shutil.copy(straight / name, tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for epochs in (2, 3):
        code, output = finish(train(tree, tmp_path, 'train.epochs={}'.format(epochs),
                                    'resume=auto'))
        assert code == 0, output
        assert 'resumed from {} at iteration 9'.format(tmp_path / 'snapshot_iter_9.npz') in output
        assert 'nothing to train' in output, output
        assert re.search(r'after 3\.00 epochs \(9 iterations\)', output), output
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != 'config.yaml'}
        assert after == before


def test_the_logged_test_accuracy_is_that_of_the_saved_model(straight, tree, tmp_path):
    """Each rank's BatchNorm running statistics are its own; the logged accuracy was the
    mean of the ranks' accuracies, each with its own, and model.npz held rank 0's. They are
    averaged before each evaluation: the last logged accuracy is model.npz's (the test
    split, 12 images per rank in batches of 4, needs no padding)."""
    from launching import run_launcher
    logged = json.loads((straight / 'log').read_text())[-1]['validation/main/accuracy']
    done = run_launcher('launch.evaluate', ['model={}'.format(straight / 'model.npz'),
                                            'out={}'.format(tmp_path), 'data.root={}'.format(
                                                tree)] + TINY, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((tmp_path / 'eval.json').read_text())
    assert evaluated['n'] == 24
    assert evaluated['top1'] == pytest.approx(logged, abs=1e-6)


def test_resume_refuses_what_changes_the_checkpoint_and_prints_what_changed(
        straight, tree, tmp_path):
    # Batch per rank (the lr schedule would decay an epoch early), the seed (other shards),
    # the precision (other optimizer state), other data (a label changed): refused.
    out = tmp_path / 'out'
    out.mkdir()
    shutil.copy(straight / 'snapshot_iter_6.npz', out)
    relabelled = tmp_path / 'relabelled'
    shutil.copytree(tree, relabelled)
    index = (relabelled / 'Ebay_train.txt').read_text().splitlines()
    fields = index[1].split()
    fields[2] = '12' if fields[2] != '12' else '11'
    index[1] = ' '.join(fields)
    (relabelled / 'Ebay_train.txt').write_text('\n'.join(index) + '\n')
    for override, change in (('train.batch_size=2', 'train.batch_size 4 -> 2'),
                             ('train.seed=1', 'train.seed 0 -> 1'),
                             ('train.dtype=mixed16', 'train.dtype float32 -> mixed16'),
                             ('data.root={}'.format(relabelled),
                              'the train split (data.root) 24 images, sha256 ')):
        code, output = finish(train(tree, out, 'train.epochs=3', 'resume=auto', override))
        line = error_line(code, output)
        assert line.startswith('error: checkpoint {} cannot resume in this run, which changes '
                               'what it means: {}'.format(out / 'snapshot_iter_6.npz', change)), \
            line
    # The same data in another folder, and what may change: resumed, exactly, and said.
    moved = tmp_path / 'moved'
    shutil.copytree(tree, moved)
    code, output = finish(train(moved, out, 'train.epochs=3', 'resume=auto',
                                'checkpoint.keep=2', 'train.eval_batch_size=3'))
    assert code == 0, output
    assert 'resumed from {} at iteration 6'.format(out / 'snapshot_iter_6.npz') in output
    for change in ('data.root {} -> {}'.format(tree, moved), 'checkpoint.keep 3 -> 2',
                   'train.eval_batch_size 0 -> 3', 'out {} -> {}'.format(straight, out)):
        assert 'changed on resume: ' + change in output, output
    assert output.count('changed on resume: ') == 4, output
    assert_same_weights(straight / 'snapshot_iter_9.npz', out / 'snapshot_iter_9.npz')


def test_a_crafted_checkpoint_does_not_run_code(straight, tree, tmp_path):
    """A checkpoint whose rank states are pickles (as the first layout stored them) that
    create a file when loaded, and one with an object array: refused, nothing run."""
    from files import arrays_of, object_array, pickled_rank_states, rewrite
    marker = tmp_path / 'ran'
    pickled = tmp_path / 'pickled.npz'
    pickled_rank_states(straight / 'snapshot_iter_6.npz', pickled, marker)
    objects = tmp_path / 'objects.npz'
    arrays = arrays_of(straight / 'snapshot_iter_6.npz')
    arrays['updater/model:main/predictor/fc6/W'] = object_array(marker)
    rewrite(objects, arrays)
    for path, text in ((pickled, 'was written by an earlier version of launch.train, which '
                                 'stored the ranks\' states with pickle'),
                       (objects, 'holds updater/model:main/predictor/fc6/W as Python objects')):
        code, output = finish(train(tree, tmp_path / 'out', 'train.epochs=3',
                                    'resume={}'.format(path)))
        assert not marker.exists(), 'the checkpoint ran the code in it'
        assert text in error_line(code, output), output


def test_evaluate_and_predict_take_a_checkpoint(straight, tree, tmp_path):
    """The model of snapshot_iter_9.npz is the final model.npz: the same report and the
    same predictions; with another model.arch, one line naming the arch it was trained
    with."""
    from launching import run_launcher
    common = ['data.root={}'.format(tree)] + TINY
    reports = {}
    for name in ('model.npz', 'snapshot_iter_9.npz'):
        out = tmp_path / name
        done = run_launcher('launch.evaluate', ['model={}'.format(straight / name),
                                                'out={}'.format(out)] + common, ranks=2)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[name] = json.loads((out / 'eval.json').read_text())
        reports[name].pop('model')
    assert reports['model.npz'] == reports['snapshot_iter_9.npz']
    images = [str(tree / line.split()[3])
              for line in (tree / 'Ebay_test.txt').read_text().splitlines()[1:4]]
    predictions = [run_launcher('launch.predict', ['model={}'.format(straight / name)]
                                + common + images) for name in ('model.npz',
                                                                'snapshot_iter_9.npz')]
    assert predictions[0].returncode == 0 and predictions[0].stdout.count('%') == 15
    assert predictions[1].stdout == predictions[0].stdout, predictions[1].stderr
    done = run_launcher('launch.evaluate', ['model={}'.format(straight / 'snapshot_iter_9.npz'),
                                            'out={}'.format(tmp_path)] + common
                        + ['model.arch=resnet101'], ranks=2)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        'error: model file {} holds the weights of a resnet50, not of the model.arch=resnet101 '
        'this command builds (it was trained with model.arch=resnet50); pass '
        'model.arch=resnet50'.format(straight / 'snapshot_iter_9.npz'))


def test_a_crafted_config_does_not_run_code(tree, tmp_path):
    """A YAML tag that would call a Python function: read as plain YAML, it is refused."""
    marker = tmp_path / 'ran'
    config = tmp_path / 'evil.yaml'
    config.write_text('train:\n  epochs: !!python/object/apply:builtins.open ["{}", "w"]\n'
                      .format(marker))
    code, output = finish(start(['-m', 'launch.train', '-c', str(config),
                                 'data.root={}'.format(tree), 'out={}'.format(tmp_path)]))
    assert not marker.exists(), 'the config ran the code in it'
    assert 'is not valid YAML' in error_line(code, output), output
