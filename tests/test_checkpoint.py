"""Checkpoints in one process: naming, retention, atomic writes, exact resume, signals.

Marked ``mpi`` tests also run on 2 ranks (``make test``): what each rank alone holds.
"""
import errno
import io
import json
import os
import signal
from types import SimpleNamespace

import distributed  # noqa: F401
import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy
import pytest
from chainer.training import extensions

from distributed.checkpoint.extension import attach
from distributed.checkpoint.files import FORMAT, CheckpointError, find_latest, read_checkpoint, save
from distributed.checkpoint.resume import choose, fit, load, rank_count_refusal
from distributed.model import seed_random_state
from distributed.config import CheckpointConfig, load_config, to_dict
from distributed.data.datasets import StreamExamples
from distributed.data.stream import ChunkIterator
from distributed.data.transforms import draws
from distributed.updater import ChunkUpdater
from distributed.liveness import STOP_SIGNALS, StopSignal


class Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc1 = L.Linear(6, 8)
            self.bn = L.BatchNormalization(8)
            self.fc2 = L.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def noisy(in_data):
    """A random augmentation drawing from the example's key, as the product's do."""
    x, t, key = in_data
    return x + draws(key).normal(0, 0.1, x.shape).astype(numpy.float32), t


CHUNKS = 2


def record(ranks, *overrides):
    """A run's record as ``checkpoint.resume.describe_run`` makes it, for the toy trainer."""
    overrides = ('train.chunks={}'.format(CHUNKS),) + overrides
    return {'format': FORMAT, 'config': to_dict(load_config(None, overrides)),
            'ranks': ranks, 'data': {'train_images': 10, 'train_sha256': 'toy'}}


def make_trainer(out, iterations, interval=2, keep=3, seed=0):
    """The product's stream, updater and checkpoints over a toy net: 2 chunks of 2
    examples per global batch, on 1 or 2 ranks; on 2 each rank sees its own chunk, so
    its BatchNorm statistics are its own; rank 0 writes."""
    comm = chainermn.create_communicator('naive')
    seed_random_state(seed)
    pairs = list(zip(numpy.random.RandomState(1).rand(10, 6).astype(numpy.float32),
                     numpy.arange(10, dtype=numpy.int32) % 3))
    data = chainer.datasets.TransformDataset(StreamExamples(pairs, seed), noisy)
    model = L.Classifier(Net())
    optimizer = chainermn.create_multi_node_optimizer(
        chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9), comm)
    optimizer.setup(model)
    it = ChunkIterator(data, len(pairs), 2, CHUNKS, comm.size, comm.rank)
    updater = ChunkUpdater(it, optimizer, chainer.dataset.concat_examples, None, model)
    trainer = chainer.training.Trainer(updater, (iterations, 'iteration'), out=str(out))
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    stop_signal = StopSignal()
    stop_signal.install()
    attach(trainer, SimpleNamespace(comm=comm, is_root=comm.rank == 0),
           CheckpointConfig(interval=interval, keep=keep), stop_signal,
           record(comm.size) if comm.rank == 0 else None)
    return trainer, comm


def weights(trainer):
    model = trainer.updater.get_optimizer('main').target
    state = trainer.updater.get_optimizer('main').target.namedparams()
    out = {name: p.array.copy() for name, p in state}
    out['bn/avg_mean'] = model.predictor.bn.avg_mean.copy()
    for name, param in model.namedparams():
        out['v' + name] = param.update_rule.state['v'].copy()
    return out


def run(trainer):
    try:
        trainer.run()
    finally:
        trainer.get_extension('checkpointer').stop_signal.uninstall()


def test_find_latest_takes_the_highest_finished_iteration(tmp_path):
    assert find_latest(str(tmp_path)) is None
    assert find_latest(str(tmp_path / 'absent')) is None
    for name in ('snapshot_iter_9.npz', 'snapshot_iter_10.npz', 'snapshot_iter_2.npz',
                 'snapshot_iter_11.npz.part', 'model.npz'):
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / 'tmpsnapshot_iter_12.npzabc').mkdir()
    assert find_latest(str(tmp_path)) == str(tmp_path / 'snapshot_iter_10.npz')


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


def test_interval_and_keep(tmp_path):
    trainer, _ = make_trainer(tmp_path, 9, interval=2, keep=2)
    run(trainer)
    # Every 2 iterations, at each epoch end (10 samples, batch 4) and at the end; keep 2.
    assert sorted(os.listdir(tmp_path)) == ['log', 'snapshot_iter_8.npz', 'snapshot_iter_9.npz']


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    # The checkpointer's own save (chainer's snapshot, through npz.save_npz) dies at
    # iteration 4 after writing half the archive, as on a full disk: the checkpoints
    # written before stay as they were, and no partial snapshot_iter_4.npz is left to be
    # taken for the newest by resume=auto.
    trainer, _ = make_trainer(tmp_path, 4, interval=2)
    savez, written = numpy.savez, {}

    def dies_at_4(file, **arrays):
        whole = io.BytesIO()
        savez(whole, **arrays)
        iteration = trainer.updater.iteration
        if iteration < 4:
            written['snapshot_iter_{}.npz'.format(iteration)] = whole.getvalue()
            file.write(whole.getvalue())
            return
        file.write(whole.getvalue()[:len(whole.getvalue()) // 2])
        file.flush()
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(numpy, 'savez', dies_at_4)
    with pytest.raises(OSError, match='No space left'):
        run(trainer)
    monkeypatch.undo()
    # Every 2 iterations and at the epoch end (iteration 3); the one at 4 died.
    assert sorted(written) == ['snapshot_iter_2.npz', 'snapshot_iter_3.npz']
    assert sorted(os.listdir(tmp_path)) == ['log'] + sorted(written)
    for name, data in written.items():
        assert (tmp_path / name).read_bytes() == data, name
    resumed, comm = make_trainer(tmp_path, 5)
    (path, iteration), _ = load(resumed, comm, True, 'auto', str(tmp_path))
    resumed.get_extension('checkpointer').stop_signal.uninstall()
    assert (os.path.basename(path), iteration) == ('snapshot_iter_3.npz', 3)


def test_stale_temporary_folders_are_removed_at_start(tmp_path):
    # A process killed while writing leaves chainer's temporary folder behind, with the
    # partial file in it; the next run's checkpointer removes it, and nothing else.
    stale = tmp_path / 'tmpsnapshot_iter_6.npzk3j_x0q'
    stale.mkdir()
    (stale / 'snapshot_iter_6.npz').write_bytes(b'partial')
    (tmp_path / 'tmp_notes').mkdir()
    trainer, _ = make_trainer(tmp_path, 1, interval=0)
    run(trainer)
    assert sorted(os.listdir(tmp_path)) == ['log', 'snapshot_iter_1.npz', 'tmp_notes']


def test_resume_is_exact(tmp_path):
    straight, _ = make_trainer(tmp_path / 'straight', 10)
    run(straight)
    first, _ = make_trainer(tmp_path / 'resumed', 5)
    run(first)
    second, comm = make_trainer(tmp_path / 'resumed', 10)
    (path, iteration), lines = load(second, comm, True, 'auto',
                                               str(tmp_path / 'resumed'))
    assert lines == ['resumed from {} at iteration 5'.format(path)]
    assert (os.path.basename(path), iteration) == ('snapshot_iter_5.npz', 5)
    run(second)
    expected, got = weights(straight), weights(second)
    assert expected.keys() == got.keys()
    for name in expected:
        numpy.testing.assert_array_equal(expected[name], got[name], err_msg=name)
    log = second.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == list(range(1, 11))


def test_a_signal_stops_after_a_checkpoint(tmp_path):
    # Whatever handled SIGTERM before (here a host program's handler) is put back after.
    def hosts_handler(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, hosts_handler)
    try:
        before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        trainer, _ = make_trainer(tmp_path, 1000, interval=0)
        checkpointer = trainer.get_extension('checkpointer')

        def send_at_3(trainer):
            if trainer.updater.iteration == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        trainer.extend(send_at_3, trigger=(1, 'iteration'))
        run(trainer)
        after = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert checkpointer.stopped_by == signal.SIGTERM
    assert trainer.updater.iteration == 3
    assert find_latest(str(tmp_path)) == str(tmp_path / 'snapshot_iter_3.npz')
    assert after == before


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


def text_array(value):
    return numpy.frombuffer(json.dumps(value).encode(), numpy.uint8)


def batchnorm_statistics(trainer):
    bn = trainer.updater.get_optimizer('main').target.predictor.bn
    return {name: numpy.array(getattr(bn, name)) for name in ('avg_mean', 'avg_var', 'N')}


@pytest.mark.mpi
def test_a_checkpoint_holds_the_batchnorm_statistics_averaged_over_ranks(tmp_path, world):
    """Each rank's running statistics come from its own chunks; the checkpoint holds
    their mean (what evaluation and model.npz use) and every rank resumes it."""
    first, _ = make_trainer(tmp_path, 2, interval=2)
    mine = []
    first.extend(lambda trainer: mine.append(batchnorm_statistics(trainer)),
                 trigger=(1, 'iteration'), priority=-999)  # after the updates, before the write
    run(first)
    ranks = world.allgather(mine[-1]['avg_mean'])
    assert all(not numpy.array_equal(ranks[0], other) for other in ranks[1:]), \
        'the ranks saw the same data: the check could not tell them apart'
    second, comm = make_trainer(tmp_path, 4)
    try:
        # Only rank 0 reads its out folder (each rank has its own tmp_path).
        load(second, comm, comm.rank == 0, 'auto', str(tmp_path))
    finally:
        second.get_extension('checkpointer').stop_signal.uninstall()
    resumed = batchnorm_statistics(second)
    numpy.testing.assert_allclose(resumed['avg_mean'], numpy.mean(ranks, axis=0), rtol=1e-6)


@pytest.mark.mpi
def test_the_sums_of_the_numbers_to_log_are_kept_whole_at_any_rank_count(tmp_path, world):
    """The log line of an interval a stop cut in two averages both parts over every rank:
    the checkpoint keeps the ranks' total, and the ranks of the resumed job, however
    many, share it."""
    from chainer.serializers import npz
    from distributed.across_ranks import MeanAcrossRanks

    def sums(iterations):
        trainer, comm = make_trainer(tmp_path, iterations, interval=3)
        trainer.extend(MeanAcrossRanks(comm, ['main/loss'], (10, 'iteration')))
        return trainer, comm
    first, _ = sums(3)
    losses = []
    first.extend(lambda trainer: losses.append(float(trainer.observation['main/loss'])),
                 trigger=(1, 'iteration'), priority=chainer.training.PRIORITY_EDITOR + 1)
    run(first)
    total = sum(sum(ranks) for ranks in world.allgather(losses))
    assert len({round(sum(ranks), 6) for ranks in world.allgather(losses)}) == world.size, \
        'the ranks saw the same losses: no check'
    second, comm = sums(6)
    try:
        load(second, comm, comm.rank == 0, 'auto', str(tmp_path))
    finally:
        second.get_extension('checkpointer').stop_signal.uninstall()
    resumed = npz.serialize(second.get_extension('mean_across_ranks'))
    assert list(resumed['counts']) == [3]
    numpy.testing.assert_allclose(resumed['totals'], [total], rtol=1e-6)
    shares = world.allgather(second.get_extension('mean_across_ranks')._shares()[0])
    numpy.testing.assert_allclose(sum(shares), total, rtol=1e-6)


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


def test_none_values_are_listed_not_pickled(tmp_path):
    """chainer's writer stores None as an object array, which only pickle reads: the
    checkpoint lists those keys instead, and reading gives None back."""
    path = str(tmp_path / 'snapshot_iter_1.npz')
    save(path, {'a/none': numpy.asarray(None), 'a/one': numpy.ones(2),
                           'meta/record': text_array(record(1))})
    with numpy.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ['a/one', 'meta/none', 'meta/record']
        assert json.loads(archive['meta/none'].tobytes()) == ['a/none']
    arrays, saved = read_checkpoint(open(path, 'rb').read(), path)
    assert arrays['a/none'][()] is None and saved == record(1)
    with pytest.raises(TypeError, match=r'Python objects at \[.a/list.\]'):
        save(path, {'a/list': numpy.array([{}], object)})


def test_checkpoints_of_a_run_hold_no_python_objects(tmp_path):
    # Each checkpoint reads back with allow_pickle=False and lists its None values apart.
    trainer, _ = make_trainer(tmp_path, 8, interval=1, keep=8)
    run(trainer)
    nones = []
    for name in sorted(os.listdir(tmp_path)):
        if name.startswith('snapshot_iter_'):
            with numpy.load(tmp_path / name, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            assert not [k for k, v in arrays.items() if v.dtype.hasobject]
            nones.append(json.loads(arrays['meta/none'].tobytes()))
    assert len(nones) == 8 and all(isinstance(n, list) for n in nones), nones


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    from files import arrays_of, object_array, pickled_rank_states, rewrite
    trainer, _ = make_trainer(tmp_path, 1, interval=1)
    run(trainer)
    good = tmp_path / 'snapshot_iter_1.npz'
    marker = tmp_path / 'ran'
    pickled_rank_states(good, tmp_path / 'old.npz', marker, ranks=1)
    arrays = arrays_of(good)
    arrays['updater/model:main/predictor/fc1/W'] = object_array(marker)
    rewrite(tmp_path / 'objects.npz', arrays)
    for name, message in (('old.npz', 'written by an earlier version of launch.train'),
                          ('objects.npz', 'holds updater/model:main/predictor/fc1/W as '
                                          'Python objects')):
        with pytest.raises(CheckpointError, match=message):
            choose(str(tmp_path / name), str(tmp_path), record(1), 1)
    assert not marker.exists()


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


def test_a_write_to_a_full_disk_names_the_file(tmp_path):
    # /dev/full fails every write with ENOSPC, at a flush or a close, as a full disk does:
    # the OS's error names no file, and the one line the job ends with must.
    from distributed.reports import write_config
    with pytest.raises(OSError) as error:
        save('/dev/full', {'a': numpy.zeros(100000, numpy.float32)})
    assert str(error.value) == "[Errno 28] No space left on device: '/dev/full'"
    (tmp_path / 'config.yaml').symlink_to('/dev/full')
    with pytest.raises(OSError) as error:
        write_config(load_config(None, []), str(tmp_path))
    assert error.value.filename == str(tmp_path / 'config.yaml')
