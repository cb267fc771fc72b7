"""When the extensions run: their order within an iteration, and their triggers.

chainer runs the extensions due after an update in decreasing priority (``Trainer.run``);
``PRIORITY`` is that order for the product's own, in one place. Rank 0's readers (LogReport,
PrintReport, PlotReport, ``reports.TensorBoardReport``: chainer's ``PRIORITY_READER``) run
after the numbers are made global and before the lr of the next iteration is set.
"""
import chainer
from chainer.training import PRIORITY_EDITOR, PRIORITY_READER, PRIORITY_WRITER

PRIORITY = {
    # every rank evaluates, and rank 0 saves, the mean of the ranks' BatchNorm statistics
    'mean_batchnorm_statistics': PRIORITY_WRITER + 2,
    # a finished iteration is progress for the stall watchdog, before a long evaluation
    'progress': PRIORITY_WRITER + 1,
    # the test split's loss and accuracy, reduced across ranks
    'validation': PRIORITY_WRITER,
    # the train loss and accuracy: means over ranks and iterations, at the log trigger
    'mean_across_ranks': PRIORITY_EDITOR,
    # (rank 0's readers: PRIORITY_READER) then the lr for the next iteration
    'lr_schedule': PRIORITY_READER - 1,
    # last: agree on a stop, and write the iteration's complete state
    'checkpointer': -1000,
}
"""Priority of each of the product's extensions, by name: the order within an iteration."""


class EveryAndAtEnd:
    """A trigger: every ``interval`` (``(n, 'iteration')`` or ``(n, 'epoch')``) and at the
    run's last iteration (``epochs`` reached), so that the last numbers evaluated and
    logged are the final model's. It keeps state: one per extension."""

    def __init__(self, interval, epochs):
        self.every = chainer.training.triggers.IntervalTrigger(*interval)
        self.epochs = epochs

    def __call__(self, trainer):
        every = self.every(trainer)  # asked at every iteration: it tracks the previous one
        return every or trainer.updater.epoch_detail >= self.epochs

    def serialize(self, serializer):
        self.every.serialize(serializer['every'])


def log_trigger(train):
    """Log lines: every ``train.log_interval`` iterations (0: every epoch) and at the end."""
    every = (train.log_interval, 'iteration') if train.log_interval else (1, 'epoch')
    return EveryAndAtEnd(every, train.epochs)


def evaluation_trigger(train):
    """Test-split evaluations: every ``train.eval_interval`` epochs and at the end."""
    return EveryAndAtEnd((train.eval_interval, 'epoch'), train.epochs)
