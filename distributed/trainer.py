"""Trainer assembly: updater, multi-node evaluation, cross-rank means, root-only reports."""
import os
import signal
import socket

import chainer
import chainermn
import yaml
from chainer.training import extensions
import numpy

from distributed import checkpoint
from distributed.comm import loss_function
from distributed.config import to_dict
from distributed.data import unreadable_report
from distributed.optim import schedule_extension
from distributed.model import mean_of
from distributed.runtime import InputConverter

TRAIN_KEYS = ('main/loss', 'main/accuracy')


def create_trainer(config, runtime, model, optimizer, train_iter, test_iter, schedule):
    """A ``chainer.training.Trainer`` whose reports show means over all ranks.

    Every rank registers the collective extensions (evaluation, aggregation); only rank 0
    registers the ones that print or write, so ``out`` holds exactly one copy of each file.
    """
    converter = InputConverter(mean_of(model))
    updater = chainer.training.StandardUpdater(
        train_iter, optimizer, device=runtime.device, converter=converter,
        loss_func=loss_function(runtime.comm, model))
    trainer = chainer.training.Trainer(updater, (config.train.epochs, 'epoch'), out=config.out)
    log_trigger = ((config.train.log_interval, 'iteration') if config.train.log_interval
                   else (1, 'epoch'))
    eval_trigger = (config.train.eval_interval, 'epoch')

    trainer.extend(schedule_extension(schedule))
    trainer.extend(mean_across_ranks(runtime.comm, TRAIN_KEYS))
    evaluator = extensions.Evaluator(test_iter, model, device=runtime.device,
                                     converter=converter)
    trainer.extend(chainermn.create_multi_node_evaluator(evaluator, runtime.comm),
                   trigger=eval_trigger, name='validation')
    if runtime.is_root:
        write_config(config, config.out)
        add_reports(trainer, config, model, log_trigger, eval_trigger)
    checkpoint.attach(trainer, runtime.comm, runtime.is_root, config.checkpoint.interval,
                      config.checkpoint.keep)
    return trainer


def run(trainer, config, runtime, datasets):
    """Resume as ``config.resume`` says, train, and return ``summarize``'s numbers.

    SIGTERM or SIGINT on any rank makes every rank stop after the same iteration with a
    checkpoint written; the summary's ``stopped_by`` then names the signal.
    """
    where = runtime.comm.mpi_comm.gather('{} pid {} on {}'.format(
        runtime.rank, os.getpid(), socket.gethostname()))
    resumed = checkpoint.load(trainer, runtime.comm, runtime.is_root, config.resume,
                              config.out)
    if runtime.is_root:
        # Lets a message from mpiexec about a process id be traced to its rank.
        print('ranks: ' + ', '.join(where), flush=True)
        if resumed:
            print('resumed from {} at iteration {}'.format(*resumed), flush=True)
    checkpointer = trainer.get_extension('checkpointer')
    try:
        # Uncaught errors are reported by the launcher or chainermn's abort hook, once.
        trainer.run(show_loop_exception_msg=False)
        # Rank 0 may still be writing the last checkpoint; a signal meanwhile must not
        # find the other ranks already without their handlers.
        runtime.comm.mpi_comm.barrier()
    finally:
        checkpointer.stop_signal.uninstall()
    skipped, report = unreadable_report(datasets, runtime.comm)
    summary = summarize(trainer, runtime, config)
    summary.update(stopped_by=checkpointer.stopped_by, checkpoint=checkpointer.last_path,
                   skipped=skipped, skipped_report=report)
    if checkpointer.stopped_by:
        summary['signal'] = signal.Signals(checkpointer.stopped_by).name
    return summary


def mean_across_ranks(comm, keys):
    """Replace each rank's observed ``keys`` by their mean over all ranks, every iteration.

    One small allreduce for all keys. (chainermn's ObservationAggregator needs ChainerX
    and does a gather and a broadcast per key.)
    """
    def average(trainer):
        values = numpy.array([float(trainer.observation[k].array if hasattr(
            trainer.observation[k], 'array') else trainer.observation[k]) for k in keys])
        total = comm.mpi_comm.allreduce(values)
        for key, value in zip(keys, total / comm.size):
            trainer.observation[key] = value
    return chainer.training.make_extension(
        trigger=(1, 'iteration'), priority=chainer.training.PRIORITY_EDITOR,
        default_name='mean_across_ranks')(average)


def add_reports(trainer, config, model, log_trigger, eval_trigger):
    """Rank 0's extensions: the log, the console, the plots and the final model."""
    trainer.extend(extensions.observe_lr(), trigger=log_trigger)
    trainer.extend(extensions.LogReport(trigger=log_trigger))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'iteration', 'main/loss', 'main/accuracy', 'validation/main/loss',
         'validation/main/accuracy', 'lr', 'elapsed_time']), trigger=log_trigger)
    if config.train.progress:
        trainer.extend(extensions.ProgressBar(update_interval=1))
    trainer.extend(extensions.PlotReport(['main/loss', 'validation/main/loss'], 'epoch',
                                         trigger=eval_trigger, file_name='loss.png'))
    trainer.extend(extensions.PlotReport(['main/accuracy', 'validation/main/accuracy'],
                                         'epoch', trigger=eval_trigger,
                                         file_name='accuracy.png'))
    trainer.extend(extensions.snapshot_object(model, 'model.npz'),
                   trigger=(config.train.epochs, 'epoch'))


def write_config(config, out):
    """The resolved config, so a result folder says how it was made."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'config.yaml'), 'w') as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)


def describe(summary):
    """The run's closing lines for the console."""
    lines = ['warning: ' + summary['skipped_report']] if summary['skipped_report'] else []
    if summary['stopped_by']:
        lines.append('stopped by {signal} at iteration {iterations}; checkpoint {checkpoint}; '
                     'continue with resume=auto'.format(**summary))
        return '\n'.join(lines)
    test = ('test accuracy {test_accuracy:.3f} (loss {test_loss:.3f})'.format(**summary)
            if summary['test_accuracy'] is not None else 'not evaluated')
    lines.append('{} after {epochs:.2f} epochs ({iterations} iterations), {seconds:.0f} s, '
                 '{images_per_sec:.1f} images/s on {ranks} ranks; results in {out}'.format(
                     test, **summary))
    return '\n'.join(lines)


def summarize(trainer, runtime, config):
    """Final numbers for the console: test accuracy, wall time, images/s, where results are."""
    log = trainer.get_extension('LogReport').log if runtime.is_root else []
    last_eval = next((e for e in reversed(log) if 'validation/main/accuracy' in e), {})
    elapsed = trainer.elapsed_time
    images = trainer.updater.iteration * config.train.batch_size * runtime.size
    return {
        'test_accuracy': last_eval.get('validation/main/accuracy'),
        'test_loss': last_eval.get('validation/main/loss'),
        'iterations': trainer.updater.iteration,
        'epochs': trainer.updater.epoch_detail,
        'seconds': elapsed,
        'images_per_sec': images / elapsed if elapsed else 0.0,
        'ranks': runtime.size,
        'out': os.path.abspath(config.out),
    }
