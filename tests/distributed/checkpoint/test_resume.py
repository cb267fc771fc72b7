"""distributed.checkpoint.resume: which checkpoint a run continues from, whether it may, and
that it continues exactly."""
import errno
import os

import distributed  # noqa: F401
import numpy
import pytest

from distributed.checkpoint.files import CheckpointError
from distributed.checkpoint.resume import choose, fit, load, rank_count_refusal
from toy_trainer import make_trainer, record, run, weights


def test_resume_settings(tmp_path):
    out = str(tmp_path)
    mine = record(1)
    assert choose('', out, mine, 1) == (None, None, None, [], [])
    assert choose('auto', out, mine, 1) == (None, None, None, [
        'resume=auto: {} holds no checkpoint (snapshot_iter_<N>.npz); starting afresh'.format(
            out)], [])
    with pytest.raises(CheckpointError, match='no such checkpoint'):
        choose(str(tmp_path / 'nope.npz'), out, mine, 1)
    with pytest.raises(CheckpointError, match='holds no checkpoint'):
        choose(out, out, mine, 1)
    trainer, _ = make_trainer(tmp_path, 1, interval=0)
    run(trainer)
    written = str(tmp_path / 'snapshot_iter_1.npz')
    for resume in ('auto', out, written):
        path, data, arrays, skipped, changed = choose(resume, out, mine, 1)
        assert (path, skipped, changed) == (written, [], [])
        assert 'updater/iteration' in arrays and data == open(written, 'rb').read()


def test_resume_is_exact(tmp_path):
    straight, _ = make_trainer(tmp_path / 'straight', 10)
    run(straight)
    first, _ = make_trainer(tmp_path / 'resumed', 5)
    run(first)
    second, comm = make_trainer(tmp_path / 'resumed', 10)
    (path, iteration), lines = load(second, comm, True, 'auto', str(tmp_path / 'resumed'))
    assert lines == ['resumed from {} at iteration 5'.format(path)]
    assert (os.path.basename(path), iteration) == ('snapshot_iter_5.npz', 5)
    run(second)
    expected, got = weights(straight), weights(second)
    assert expected.keys() == got.keys()
    for name in expected:
        numpy.testing.assert_array_equal(expected[name], got[name], err_msg=name)
    log = second.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == list(range(1, 11))


def test_resume_with_a_foreign_file_is_a_clear_error(tmp_path):
    (tmp_path / 'snapshot_iter_3.npz').write_bytes(b'not a checkpoint')
    trainer, comm = make_trainer(tmp_path, 5)
    with pytest.raises(CheckpointError, match='snapshot_iter_3.npz'):
        load(trainer, comm, True, 'auto', str(tmp_path))
    trainer.get_extension('checkpointer').stop_signal.uninstall()


def test_a_rank_count_that_does_not_divide_the_chunks_is_refused_in_one_line():
    for chunks, ranks, works in ((4, 3, '1, 2, 4'), (2, 3, '1, 2'), (6, 4, '1, 2, 3, 6')):
        saved = record(2, 'train.chunks={}'.format(chunks))
        with pytest.raises(CheckpointError) as refused:
            fit('c.npz', saved, saved, ranks)
        assert str(refused.value) == (
            'checkpoint c.npz: the run has {} chunks per global batch (train.chunks), which '
            '{} rank(s) cannot share; run it on {} ranks, or start afresh in another out '
            'folder'.format(chunks, ranks, works))
    # Any count that divides them resumes, and says what changed.
    saved = record(4, 'train.chunks=4')
    assert fit('c.npz', saved, record(1, 'train.chunks=4'), 1) == []
    assert fit('c.npz', saved, saved, 2) == []
    # More ranks than chunks: only when asked for, and when they split every chunk evenly.
    saved = record(2, 'train.chunks=2', 'train.batch_size=4')
    with pytest.raises(CheckpointError) as refused:
        fit('c.npz', saved, saved, 4)
    assert str(refused.value) == (
        'checkpoint c.npz: the run has 2 chunks per global batch (train.chunks), which 4 '
        'rank(s) cannot share; run it on 1, 2 ranks (or split each chunk in 2 with '
        'train.split_chunks=true), or start afresh in another out folder')
    split = record(4, 'train.chunks=2', 'train.batch_size=4', 'train.split_chunks=true')
    assert fit('c.npz', saved, split, 4) == [
        'changed on resume: train.split_chunks false -> true']
    with pytest.raises(CheckpointError, match=r'which 6 rank\(s\) cannot share; '
                       r'run it on 1, 2 ranks \(train.split_chunks=true needs a rank count '
                       r'that is a multiple of 2 and splits each chunk\'s 4 images evenly\), '
                       'or start afresh in another out folder'):
        fit('c.npz', saved, split, 6)  # 4 images in 3 parts
    # A fresh run of train.chunks=2 on 3 ranks has no checkpoint to leave behind.
    assert rank_count_refusal(2, 3, 4, fresh=True) == (
        'the run has 2 chunks per global batch (train.chunks), which 3 rank(s) cannot share; '
        'run it on 1, 2 ranks, or set train.chunks to a multiple of 3 (0: the rank count)')


def test_auto_resumes_from_the_newest_checkpoint_that_reads(tmp_path, monkeypatch):
    """Every way a newer checkpoint can fail to read back whole is skipped and said; the
    same file given with resume=PATH is an error naming it."""
    from files import DAMAGES, damage
    from distributed import safe_npz
    trainer, _ = make_trainer(tmp_path, 2, interval=1, keep=5)
    run(trainer)
    good = tmp_path / 'snapshot_iter_2.npz'
    damaged = {}
    for iteration, how in enumerate(DAMAGES, start=3):
        damaged[how] = tmp_path / 'snapshot_iter_{}.npz'.format(iteration)
        damage(good, damaged[how], how)
    # Not readable (as root, chmod alone does not stop a read: the read fails here too).
    damaged['unreadable'] = tmp_path / 'snapshot_iter_{}.npz'.format(len(DAMAGES) + 3)
    damaged['unreadable'].write_bytes(good.read_bytes())
    damaged['unreadable'].chmod(0)

    def denies(path, *args, **kwargs):
        if str(path) == str(damaged['unreadable']):
            raise PermissionError(errno.EACCES, 'Permission denied', str(path))
        return open(path, *args, **kwargs)
    monkeypatch.setattr(safe_npz, 'open', denies, raising=False)
    reasons = {'truncated': 'cut short or damaged: its zip directory does not read',
               'empty': 'is not an .npz archive (empty)',
               'zeros': 'is not an .npz archive',
               'crc': 'does not read (BadZipFile: Bad CRC-32',
               'folder': 'cannot be read (Is a directory)',
               'not_an_array': 'notes is not a numpy array',
               'unreadable': 'cannot be read (Permission denied)'}
    path, _, _, skipped, _ = choose('auto', str(tmp_path), record(1), 1)
    assert path == str(good)
    assert len(skipped) == len(reasons)
    for line, how in zip(skipped, reversed(list(damaged))):
        assert line.startswith('resume=auto: skipped a checkpoint that does not read: {}'
                               .format(damaged[how])), line
        assert reasons[how] in line, line
    for how, file in damaged.items():
        if how != 'folder':  # a folder is searched for checkpoints
            with pytest.raises(CheckpointError) as failed:
                choose(str(file), str(tmp_path), record(1), 1)
            assert str(failed.value).startswith('resume={}: {}'.format(file, file))
            assert reasons[how] in str(failed.value) and '\n' not in str(failed.value)
    for name in os.listdir(tmp_path):
        if name != good.name and name.startswith('snapshot_iter_2'):
            os.remove(tmp_path / name)
    os.remove(good)
    os.remove(tmp_path / 'snapshot_iter_1.npz')
    with pytest.raises(CheckpointError,
                       match=r'resume=auto: none of the 7 checkpoint\(s\) in .* reads'):
        choose('auto', str(tmp_path), record(1), 1)


def test_what_may_change_on_resume_and_what_may_not():
    mine = record(2, 'train.batch_size=8')
    for saved, change in ((record(2, 'train.batch_size=4'), 'train.batch_size 4 -> 8'),
                          (record(2, 'train.batch_size=8', 'model.arch=resnet101'),
                           'model.arch resnet101 -> resnet50'),
                          (record(2, 'train.batch_size=8', 'train.seed=3'), 'train.seed 3 -> 0'),
                          (record(2, 'train.batch_size=8', 'train.dtype=mixed16'),
                           'train.dtype mixed16 -> float32'),
                          (dict(mine, data={'train_images': 9, 'train_sha256': 'other'}),
                           'the train split (data.root) 9 images, sha256 other -> 10 images')):
        with pytest.raises(CheckpointError) as refused:
            fit('c.npz', saved, mine, 2)
        assert str(refused.value).startswith(
            'checkpoint c.npz cannot resume in this run, which changes what it means: '
            + change), str(refused.value)
    with pytest.raises(CheckpointError, match='which 3 rank.s. cannot share'):
        fit('c.npz', mine, mine, 3)
    saved = record(2, 'train.batch_size=8', 'data.root=/old', 'optimizer.lr=0.2',
                   'train.epochs=3', 'resume=auto')
    assert fit('c.npz', saved, mine, 2) == [
        'changed on resume: data.root /old -> minisop',
        'changed on resume: optimizer.lr 0.2 -> 0.1',
        'changed on resume: train.epochs 3.0 -> 90.0']
