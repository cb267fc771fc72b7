"""The checkpointer: the trainer extension that agrees on a stop and writes checkpoints.

Written by rank 0 only, with chainer's ``extensions.snapshot`` (it writes into a temporary
folder inside ``out`` and renames, so a crash mid-write leaves the previous checkpoints
intact; ``n_retains`` keeps the newest ``checkpoint.keep``); the file is ``files``'s.
"""
import os
import shutil

import chainer
from chainer.training import extensions

from distributed.across_ranks import mean_batchnorm_statistics
from distributed.checkpoint.files import FILENAME, JobState, save
from distributed.triggers import PRIORITY


def collect(trainer, comm):
    """Make what differs between ranks equal on every rank before a checkpoint;
    collective. The BatchNorm running statistics become their mean over the ranks (what
    evaluation and ``model.npz`` use; by linearity of their updates the mean of a later
    step is the same as without this), and the extensions that keep a rank's share of a
    sum (``COLLECTED_EXTENSIONS``) combine it, so that rank 0's state is the run's."""
    mean_batchnorm_statistics(trainer.updater.get_optimizer('main').target, comm)
    for name in COLLECTED_EXTENSIONS:
        try:
            extension = trainer.get_extension(name)
        except ValueError:
            continue
        extension.combine()


COLLECTED_EXTENSIONS = ('mean_across_ranks',)
"""Extensions with a ``combine()`` (collective) that makes their state the same on every
rank (``across_ranks.MeanAcrossRanks``)."""


class Checkpointer(chainer.training.Extension):
    """Every iteration: agree on a stop request, and checkpoint when due or stopping.

    Registered on every rank (the gather and the agreement are collective); only rank 0
    writes. It runs after every other extension, so a checkpoint holds the iteration's
    complete state, the same as a run that never stopped would have at that point.
    """
    trigger = 1, 'iteration'
    priority = PRIORITY['checkpointer']
    name = 'checkpointer'

    def __init__(self, comm, is_root, interval, keep, stop_signal, record):
        self.comm = comm
        self.is_root = is_root
        self.interval = interval
        self.stop_signal = stop_signal
        self.record = record
        self.stopped_by = None
        self.last_path = None
        self._saved_at = None
        self._state = None
        self._snapshot = extensions.snapshot(savefun=save, filename=FILENAME, n_retains=keep)

    def initialize(self, trainer):
        self._state = JobState(trainer, self.record)
        self._snapshot._target = self._state
        if self.is_root:
            self._snapshot.initialize(trainer)
            # A process killed mid-write leaves chainer's temporary folder behind.
            for name in os.listdir(trainer.out):
                if name.startswith('tmpsnapshot_iter_'):
                    shutil.rmtree(os.path.join(trainer.out, name), ignore_errors=True)

    @staticmethod
    def finished(trainer):
        """Whether this is the run's last iteration."""
        updater = trainer.updater
        length, unit = trainer.stop_trigger.get_training_length()
        return updater.iteration >= length if unit == 'iteration' else (
            updater.epoch_detail >= length)

    def due(self, trainer):
        return self.finished(trainer) or trainer.updater.is_new_epoch or bool(
            self.interval and trainer.updater.iteration % self.interval == 0)

    def stop_requested(self, trainer):
        """True on every rank when any rank received a stop signal (one small allreduce).

        At the run's last iteration a stop is not recorded: the run is complete anyway."""
        from mpi4py import MPI
        mine = self.stop_signal.signum or 0
        agreed = self.comm.mpi_comm.allreduce(mine, op=MPI.MAX)
        if agreed and self.stopped_by is None and not self.finished(trainer):
            self.stopped_by = agreed
        return bool(agreed)

    def __call__(self, trainer):
        if self.stop_requested(trainer) or self.due(trainer):
            self.save(trainer)
            # A signal that came while the checkpoint was written stops the job now, not
            # after another iteration and a second checkpoint.
            self.stop_requested(trainer)

    def save(self, trainer):
        if self._saved_at == trainer.updater.iteration:
            return
        collect(trainer, self.comm)
        if self.is_root:
            self._snapshot(trainer)
            self.last_path = os.path.join(trainer.out, FILENAME.format(trainer))
        self._saved_at = trainer.updater.iteration

    def finalize(self):
        self._snapshot.finalize()


class _StopOr:
    """The trainer's stop trigger, a stop agreed by the checkpointer, or a run at or past
    its end (chainer's interval trigger fires only as it crosses the end: a run resumed
    with fewer epochs than its checkpoint holds would train on)."""

    def __init__(self, trigger, checkpointer):
        self.trigger = trigger
        self.checkpointer = checkpointer

    def __call__(self, trainer):
        return (self.checkpointer.stopped_by is not None or self.trigger(trainer)
                or self.checkpointer.finished(trainer))

    def serialize(self, serializer):
        if hasattr(self.trigger, 'serialize'):
            self.trigger.serialize(serializer)

    def get_training_length(self):
        return self.trigger.get_training_length()


def attach(trainer, runtime, settings, stop_signal, record):
    """Add the checkpointer to ``trainer``, and the stop that ``stop_signal`` (an installed
    ``liveness.StopSignal``) asks for; returns the checkpointer. ``settings``: the
    config's ``checkpoint`` section (interval, keep). ``record`` (rank 0's
    ``resume.describe_run``, None on the others) goes into every checkpoint it writes, and
    ``resume.load`` compares a checkpoint's with it."""
    checkpointer = Checkpointer(runtime.comm, runtime.is_root, settings.interval,
                                settings.keep, stop_signal, record)
    trainer.extend(checkpointer)
    trainer.stop_trigger = _StopOr(trainer.stop_trigger, checkpointer)
    return checkpointer
