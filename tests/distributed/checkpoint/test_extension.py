"""distributed.checkpoint.extension: when checkpoints are written, atomically, what they
collect from every rank, and a stop signal."""
import errno
import io
import os
import signal

import distributed  # noqa: F401
import chainer
import numpy
import pytest

from distributed.checkpoint.files import find_latest
from distributed.checkpoint.resume import load
from distributed.liveness import STOP_SIGNALS
from toy_trainer import batchnorm_statistics, make_trainer, run


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
