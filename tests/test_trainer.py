"""distributed.trainer: global means for the log, when evaluation runs, the closing line."""
import io

import chainer
import chainermn
import numpy
import pytest
from chainer.training import extensions

from distributed.across_ranks import MeanAcrossRanks, MeanBatchNormStatistics
from distributed.reports import TerminalOnly, describe
from distributed.triggers import EveryAndAtEnd


class Reporting(chainer.Link):
    """Reports ``x * (rank + 1)`` as its loss and minus that as its accuracy."""

    def __init__(self, rank):
        super().__init__()
        with self.init_scope():
            self.w = chainer.Parameter(numpy.zeros(1, numpy.float32))
        self.rank = rank

    def forward(self, x):
        value = float(x[0]) * (self.rank + 1)
        chainer.report({'loss': value, 'accuracy': -value}, self)
        return chainer.functions.sum(self.w * 0)


def tiny_trainer(comm, iterations, trigger):
    model = Reporting(comm.rank)
    optimizer = chainer.optimizers.SGD().setup(model)
    data = numpy.arange(iterations, dtype=numpy.float32)
    updater = chainer.training.StandardUpdater(
        chainer.iterators.SerialIterator(data, 1, shuffle=False), optimizer,
        converter=lambda batch, device: numpy.array(batch))
    trainer = chainer.training.Trainer(updater, (iterations, 'iteration'))
    trainer.extend(MeanAcrossRanks(comm, ('main/loss', 'main/accuracy'), trigger))
    trainer.extend(extensions.LogReport(trigger=trigger, log_name=None))
    seen = []
    trainer.extend(lambda t: seen.append('main/loss' in t.observation), trigger=(1, 'iteration'),
                   priority=chainer.training.PRIORITY_READER)
    return trainer, seen


@pytest.mark.mpi
def test_the_log_holds_means_over_ranks_and_iterations_only():
    comm = chainermn.create_communicator('naive')
    trainer, seen = tiny_trainer(comm, 6, (2, 'iteration'))
    trainer.run()
    log = trainer.get_extension('LogReport').log
    # Iterations 2k-1, 2k see x = 2k-2, 2k-1; rank r reports x * (r + 1).
    ranks_mean = numpy.mean([r + 1 for r in range(comm.size)])
    for k, entry in enumerate(log, 1):
        assert entry['iteration'] == 2 * k
        assert entry['main/loss'] == pytest.approx((2 * k - 1.5) * ranks_mean)
        assert entry['main/accuracy'] == pytest.approx(-(2 * k - 1.5) * ranks_mean)
    assert len(log) == 3
    # A reader between triggers sees no rank-local number.
    assert seen == [False, True] * 3


def test_sums_between_triggers_survive_a_checkpoint():
    from mpi4py import MPI
    comm = chainermn.create_communicator('naive', MPI.COMM_SELF)
    trainer, _ = tiny_trainer(comm, 3, (4, 'iteration'))
    trainer.run()
    saved = chainer.serializers.DictionarySerializer()
    trainer.get_extension('mean_across_ranks').serialize(saved)
    again, _ = tiny_trainer(comm, 3, (4, 'iteration'))
    extension = again.get_extension('mean_across_ranks')
    extension.serialize(chainer.serializers.NpzDeserializer(saved.target))
    # x = 0, 1, 2: three iterations summing to 3, kept whole.
    assert extension._counts == {'main/loss': 3, 'main/accuracy': 3}
    assert float(extension._shares()[0]) == pytest.approx(3.0)


@pytest.mark.parametrize('every, fired', [
    ((3, 'iteration'), [3, 6, 9, 10]),
    ((1, 'epoch'), [4, 8, 10]),
    ((0.5, 'epoch'), [2, 4, 6, 8, 10]),
    ((4, 'epoch'), [10]),
])
def test_logs_and_evaluations_run_every_interval_and_at_the_last_iteration(every, fired):
    # 4 iterations an epoch, 2.5 epochs: the run ends at iteration 10, mid-interval.
    data = numpy.zeros((4, 1), numpy.float32)
    model = chainer.links.Linear(1, 1)
    updater = chainer.training.StandardUpdater(
        chainer.iterators.SerialIterator(data, 1), chainer.optimizers.SGD().setup(model),
        loss_func=lambda x: chainer.functions.sum(model(x)))
    trainer = chainer.training.Trainer(updater, (2.5, 'epoch'))
    seen = []
    trainer.extend(lambda t: seen.append(t.updater.iteration),
                   trigger=EveryAndAtEnd(every, 2.5))
    trainer.run()
    assert seen == fired


def test_the_closing_line():
    summary = dict(skipped_report='', stopped_by=0, test_accuracy=0.75, test_loss=0.5,
                   epochs=8.0, iterations=80, seconds=60.0, images_per_sec=42.0, ranks=2,
                   out='/r')
    assert describe(summary) == ('test accuracy 0.750 (loss 0.500) after 8.00 epochs (80 '
                                 'iterations), 60 s, 42.0 images/s on 2 ranks; results in /r')
    assert describe(dict(summary, test_accuracy=None)).startswith('not evaluated after')
    assert describe(dict(summary, ranks=1)).endswith('images/s on 1 rank; results in /r')


@pytest.mark.mpi
def test_batchnorm_running_statistics_are_averaged_over_the_ranks(world):
    # Each rank's running statistics are its own shard's; before an evaluation every rank
    # takes their mean, so that all evaluate (and rank 0 saves) the same model.
    comm = chainermn.create_communicator('naive')
    model = chainer.Sequential(chainer.links.Linear(2, 3), chainer.links.BatchNormalization(3))
    bn = model[1]
    bn.avg_mean[...] = comm.rank + 1
    bn.avg_var[...] = 2.0 * (comm.rank + 1)
    weights = model[0].W.array.copy()
    MeanBatchNormStatistics(comm, model, (1, 'iteration'))(None)
    ranks_mean = numpy.mean([r + 1 for r in range(comm.size)])
    numpy.testing.assert_allclose(bn.avg_mean, numpy.full(3, ranks_mean, numpy.float32))
    numpy.testing.assert_allclose(bn.avg_var, numpy.full(3, 2 * ranks_mean, numpy.float32))
    assert bn.avg_mean.dtype == numpy.float32
    numpy.testing.assert_array_equal(model[0].W.array, weights)  # weights untouched


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_terminal_control_sequences_reach_only_a_terminal():
    # What chainer's PrintReport and ProgressBar write: an erase, a line, a cursor move.
    text = '\x1b[Jepoch 1   0.5\n\x1b[2A\x1b[?25l'
    for tty, expected in ((True, text), (False, 'epoch 1   0.5\n')):
        stream = Stream(tty)
        TerminalOnly(stream).write(text)
        assert stream.getvalue() == expected
