"""Trainer assembly and the run: updater, the collective extensions on every rank, rank 0's
reports, the checkpointer; then the training loop and its summary."""
import signal

import chainer

from distributed import liveness
from distributed.across_ranks import MeanAcrossRanks, MeanBatchNormStatistics, SplitEvaluation
from distributed.checkpoint import extension as checkpointing
from distributed.checkpoint.resume import describe_run
from distributed.comm import loss_function
from distributed.data import unreadable_report
from distributed.model import mean_of
from distributed.optim import schedule_extension
from distributed.reports import add_reports, summarize, write_config
from distributed.data.converter import InputConverter
from distributed.triggers import PRIORITY, evaluation_trigger, log_trigger
from distributed.updater import ChunkUpdater

TRAIN_KEYS = ('main/loss', 'main/accuracy')


def create_trainer(config, runtime, model, optimizer, iterators, schedule, stop_signal):
    """A ``chainer.training.Trainer`` whose reports show means over all ranks.

    ``iterators``: ``(train, test)``. Every rank registers the collective extensions
    (evaluation, aggregation); only rank 0 registers the ones that print or write, so
    ``out`` holds exactly one copy of each file. ``stop_signal`` (an installed
    ``liveness.StopSignal``) makes every rank stop after the same iteration with a
    checkpoint written. Their order within an iteration: ``triggers.PRIORITY``.
    """
    train_iter, test_iter = iterators
    converter = InputConverter(mean_of(model))
    updater = ChunkUpdater(train_iter, optimizer, converter, runtime.device,
                           loss_function(runtime.comm, model))
    trainer = chainer.training.Trainer(updater, (config.train.epochs, 'epoch'), out=config.out)

    trainer.extend(progress_extension(runtime.watchdog))
    trainer.extend(schedule_extension(schedule))
    trainer.extend(MeanAcrossRanks(runtime.comm, TRAIN_KEYS, log_trigger(config.train)))
    # Each evaluation batch is progress too: a long evaluation is not a stall.
    evaluating = liveness.watch_calls(converter, runtime.watchdog, lambda: (
        f'an evaluation batch after iteration {trainer.updater.iteration}'))
    trainer.extend(MeanBatchNormStatistics(runtime.comm, model,
                                           evaluation_trigger(config.train)))
    trainer.extend(SplitEvaluation(test_iter, model, evaluating, runtime.device, runtime.comm),
                   trigger=evaluation_trigger(config.train))
    if runtime.is_root:
        add_reports(trainer, config, model)
    checkpointing.attach(trainer, runtime, config.checkpoint, stop_signal,
                         describe_run(config, runtime))
    return trainer


def progress_extension(watchdog):
    """Marks each finished iteration as progress on the rank's stall ``watchdog``; it runs
    before the iteration's other extensions (evaluation, checkpoint)."""
    def mark(trainer):
        watchdog.progress(f'iteration {trainer.updater.iteration}')
    return chainer.training.make_extension(
        trigger=(1, 'iteration'), priority=PRIORITY['progress'], default_name='progress')(mark)


def run(trainer, config, runtime, datasets):
    """Train (from where ``checkpoint.resume.resume`` left the trainer) and return
    ``reports.summarize``'s numbers.

    SIGTERM or SIGINT on any rank makes every rank stop after the same iteration with a
    checkpoint written; the summary's ``stopped_by`` then names the signal.
    """
    if runtime.is_root:
        # After the checkpoint is accepted: a refused resume leaves the folder's as it was.
        write_config(config, config.out)
    # Uncaught errors are reported by the launcher or the runtime's abort hook, once.
    trainer.run(show_loop_exception_msg=False)
    runtime.comm.mpi_comm.barrier()  # rank 0 may still be writing the last checkpoint
    runtime.watchdog.stop()
    skipped, report = unreadable_report(datasets, runtime.comm)
    checkpointer = trainer.get_extension('checkpointer')
    summary = summarize(trainer, runtime, config)
    summary.update(stopped_by=checkpointer.stopped_by, checkpoint=checkpointer.last_path,
                   skipped=skipped, skipped_report=report)
    if checkpointer.stopped_by:
        summary['signal'] = signal.Signals(checkpointer.stopped_by).name
    return summary
