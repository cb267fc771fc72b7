"""distributed.trainer: global means for the log, when evaluation runs, the closing line."""
import types

import chainer
import chainermn
import numpy
import pytest
from chainer.training import extensions

from distributed.trainer import MeanAcrossRanks, describe, evaluation_trigger


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
    means = extension._summary.compute_mean()
    assert float(means['main/loss']) == pytest.approx(1.0)       # x = 0, 1, 2


@pytest.mark.parametrize('interval, epochs, points', [
    (1, 8, [1, 2, 3, 4, 5, 6, 7, 8]),
    (3, 8, [3, 6, 8]),               # the last iteration too
    (0.5, 1.2, [0.5, 1.0, 1.2]),
    (4, 2, [2]),
    (0.1, 0.3, [0.1, 0.2, 0.3]),     # no extra point from rounding
])
def test_evaluation_runs_every_interval_and_at_the_end(interval, epochs, points):
    train = types.SimpleNamespace(eval_interval=interval, epochs=epochs)
    assert evaluation_trigger(train).points == pytest.approx(points)


def test_the_closing_line_says_which_epoch_an_older_test_number_is_from():
    summary = dict(skipped_report='', stopped_by=0, test_accuracy=0.75, test_loss=0.5,
                   test_epoch=8, epochs=8.0, iterations=80, seconds=60.0,
                   images_per_sec=42.0, ranks=2, out='/r')
    line = describe(summary)
    assert line.startswith('test accuracy 0.750 (loss 0.500) after 8.00 epochs')
    assert 'at epoch' not in line
    assert 'at epoch 6 after 8.00' in describe(dict(summary, test_epoch=6))
    assert describe(dict(summary, test_accuracy=None)).startswith('not evaluated after')
