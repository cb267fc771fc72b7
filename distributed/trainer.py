"""Trainer assembly: updater, multi-node evaluation, cross-rank means, root-only reports."""
import os
import re
import signal
import socket
import sys

import chainer
import yaml
from chainer.training import extensions
import numpy

from distributed import checkpoint, liveness, threads
from distributed.comm import loss_function
from distributed.config import to_dict
from distributed.data import unreadable_report
from distributed.evaluate import softmax_cross_entropy_sum
from distributed.optim import schedule_extension
from distributed.model import mean_of
from distributed.runtime import InputConverter, naming
from distributed.updater import ChunkUpdater

TRAIN_KEYS = ('main/loss', 'main/accuracy')


def create_trainer(config, runtime, model, optimizer, train_iter, test_iter, schedule,
                   stop_signal):
    """A ``chainer.training.Trainer`` whose reports show means over all ranks.

    Every rank registers the collective extensions (evaluation, aggregation); only rank 0
    registers the ones that print or write, so ``out`` holds exactly one copy of each file.
    ``stop_signal`` (an installed ``liveness.StopSignal``) makes every rank stop after the
    same iteration with a checkpoint written.
    """
    converter = InputConverter(mean_of(model))
    updater = ChunkUpdater(train_iter, optimizer, converter, runtime.device,
                           loss_function(runtime.comm, model))
    trainer = chainer.training.Trainer(updater, (config.train.epochs, 'epoch'), out=config.out)

    trainer.extend(progress_extension(runtime.watchdog))
    trainer.extend(schedule_extension(schedule))
    trainer.extend(MeanAcrossRanks(runtime.comm, TRAIN_KEYS, log_trigger(config.train)))
    # Each evaluation batch is progress too: a long evaluation is not a stall.
    evaluating = liveness.watch_calls(converter, runtime.watchdog, lambda: (
        'an evaluation batch after iteration {}'.format(trainer.updater.iteration)))
    trainer.extend(MeanBatchNormStatistics(runtime.comm, model,
                                           evaluation_trigger(config.train)))
    trainer.extend(SplitEvaluation(test_iter, model, evaluating, runtime.device, runtime.comm),
                   trigger=evaluation_trigger(config.train))
    if runtime.is_root:
        add_reports(trainer, config, model)
    checkpoint.attach(trainer, runtime.comm, runtime.is_root, config.checkpoint.interval,
                      config.checkpoint.keep, stop_signal,
                      checkpoint.describe_run(config, runtime))
    return trainer


def progress_extension(watchdog):
    """Marks each finished iteration as progress on the rank's stall ``watchdog``; it runs
    before the iteration's other extensions (evaluation, checkpoint)."""
    def mark(trainer):
        watchdog.progress('iteration {}'.format(trainer.updater.iteration))
    return chainer.training.make_extension(
        trigger=(1, 'iteration'), priority=chainer.training.PRIORITY_WRITER + 1,
        default_name='progress')(mark)


def run(trainer, config, runtime, datasets):
    """Resume as ``config.resume`` says, train, and return ``summarize``'s numbers.

    SIGTERM or SIGINT on any rank makes every rank stop after the same iteration with a
    checkpoint written; the summary's ``stopped_by`` then names the signal.
    """
    # Threads are chosen per node (its cores shared by its ranks): each rank says its own.
    where = runtime.comm.mpi_comm.gather('{} pid {} on {} ({} threads)'.format(
        runtime.rank, os.getpid(), socket.gethostname(), threads.PER_RANK or 'NumPy\'s'))
    resumed, lines = checkpoint.load(trainer, runtime.comm, runtime.is_root, config.resume,
                                     config.out)
    checkpointer = trainer.get_extension('checkpointer')
    if runtime.is_root:
        # Lets a message from mpiexec about a process id be traced to its rank.
        print('ranks: ' + ', '.join(where), flush=True)
        for line in lines + checkpoint.settle(config.out, resumed):
            print(line, flush=True)
        if resumed and checkpointer.finished(trainer):
            print('the checkpoint is at or past the end of this run (train.epochs={}): '
                  'nothing to train'.format(config.train.epochs), flush=True)
        # After the checkpoint is accepted: a refused resume leaves the folder's as it was.
        write_config(config, config.out)
    # Uncaught errors are reported by the launcher or the runtime's abort hook, once.
    trainer.run(show_loop_exception_msg=False)
    runtime.comm.mpi_comm.barrier()  # rank 0 may still be writing the last checkpoint
    runtime.watchdog.stop()
    skipped, report = unreadable_report(datasets, runtime.comm)
    summary = summarize(trainer, runtime, config)
    summary.update(stopped_by=checkpointer.stopped_by, checkpoint=checkpointer.last_path,
                   skipped=skipped, skipped_report=report)
    if checkpointer.stopped_by:
        summary['signal'] = signal.Signals(checkpointer.stopped_by).name
    return summary


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


class MeanAcrossRanks(chainer.training.Extension):
    """At ``trigger``, replaces the observed ``keys`` by their mean over all ranks and over
    the iterations since the previous trigger; in between, removes them from the observation.

    A reader extension with the same trigger (LogReport) thus sees only global numbers.
    Every iteration's values are summed where they are (on the GPU: no copy to the host, so
    no wait for the device), and one small allreduce per trigger adds the ranks' sums up.
    Every rank computes the same number of images per iteration (its chunks), so the mean
    of the ranks' means is the mean over all images. (chainermn's ObservationAggregator
    gathers and broadcasts once per key.)

    Each rank holds its share of the sums; ``combine`` (collective, before a checkpoint)
    makes every share the ranks' mean, so that rank 0's state, saved, is the run's: it
    serializes the total, and a resumed rank takes total / its rank count, at any count.
    """
    trigger = 1, 'iteration'
    priority = chainer.training.PRIORITY_EDITOR
    name = 'mean_across_ranks'

    def __init__(self, comm, keys, trigger):
        self._comm = comm
        self._keys = keys
        self._trigger = chainer.training.trigger.get_trigger(trigger)
        self._sums = {}
        self._counts = {}

    def __call__(self, trainer):
        observation = trainer.observation
        for key in self._keys:
            if key in observation:
                value = observation.pop(key)
                value = value.array if isinstance(value, chainer.Variable) else value
                self._sums[key] = self._sums[key] + value if key in self._sums else value
                self._counts[key] = self._counts.get(key, 0) + 1
        if self._trigger(trainer):
            counts = [self._counts.get(k, 0) for k in self._keys]
            total = self._comm.mpi_comm.allreduce(self._shares())
            observation.update((k, s / (n * self._comm.size))
                               for k, s, n in zip(self._keys, total, counts) if n)
            self._sums, self._counts = {}, {}

    def _shares(self):
        return numpy.array([float(self._sums.get(k, 0.0)) for k in self._keys])

    def combine(self):
        """Every rank's share becomes the mean of the ranks' shares; collective."""
        mean = self._comm.mpi_comm.allreduce(self._shares()) / self._comm.size
        self._sums = {k: mean[i] for i, k in enumerate(self._keys) if k in self._counts}

    def serialize(self, serializer):
        self._trigger.serialize(serializer['trigger'])
        size = self._comm.size
        counts = serializer('counts', numpy.array([self._counts.get(k, 0) for k in self._keys]))
        totals = serializer('totals', self._shares() * size)
        self._counts = {k: int(n) for k, n in zip(self._keys, counts) if n}
        self._sums = {k: float(t) / size for k, t in zip(self._keys, totals) if k in self._counts}


class SplitEvaluation(chainer.training.Extension):
    """The test split's ``validation/main/loss`` and ``validation/main/accuracy``: sums
    and counts over every image of the split once, one allreduce, then divided.

    Each rank runs its shard (shards of unequal length, no image repeated: ``data``) in
    test mode; the loss is the softmax cross-entropy summed per image in float64
    (``evaluate.softmax_cross_entropy_sum``, which ``launch.evaluate`` sums too), the
    accuracy the count of images whose highest score (the first, on ties) is their label.
    So the accuracy is ``launch.evaluate``'s top-1 exactly and the loss its mean loss to
    float tolerance, at any rank count and eval batch size. (ChainerMN's
    multi-node evaluator logs the mean of the ranks' means of batch means over shards made
    equal by repeating images.) Unreadable images are None in the shard and not counted.
    """
    priority = chainer.training.PRIORITY_WRITER
    name = 'validation'

    def __init__(self, iterator, model, converter, device, comm):
        self._iterator = iterator
        self._model = model
        self._converter = converter
        self._device = device
        self._comm = comm

    def __call__(self, trainer):
        sums = numpy.zeros(3)  # loss, correct, images
        self._iterator.reset()
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            for batch in self._iterator:
                batch = [example for example in batch if example is not None]
                if not batch:
                    continue
                x, t = self._converter(batch, self._device)
                y = self._model.predictor(x)
                hits = y.array.argmax(axis=1) == t
                sums += [softmax_cross_entropy_sum(y, t), int(hits.sum()), len(batch)]
        loss, correct, images = self._comm.mpi_comm.allreduce(sums)
        if images:
            chainer.report({'validation/main/loss': loss / images,
                            'validation/main/accuracy': correct / images})

    def finalize(self):
        self._iterator.finalize()


class MeanBatchNormStatistics(chainer.training.Extension):
    """At ``trigger``, replaces every rank's BatchNorm running statistics by their mean over
    the ranks (``checkpoint.mean_batchnorm_statistics``).

    In training mode BatchNorm normalises with each chunk's own statistics; the running
    ones serve only evaluation and the saved model, and each rank accumulates its own
    from its chunks. Averaged before each evaluation, every rank evaluates the same model,
    the one rank 0 saves: the logged test accuracy is ``model.npz``'s. Training itself is
    unchanged.
    """
    priority = chainer.training.PRIORITY_WRITER + 2  # before the evaluator and the savers
    name = 'mean_batchnorm_statistics'

    def __init__(self, comm, model, trigger):
        self._comm = comm
        self._model = model
        self.trigger = trigger

    def __call__(self, trainer):
        checkpoint.mean_batchnorm_statistics(self._model, self._comm)


def add_reports(trainer, config, model):
    """Rank 0's extensions: the log, the console, the plots and the final model.

    They all read at the log trigger, where ``MeanAcrossRanks`` puts the global numbers;
    the plots have a point per log line, as the log has."""
    train = config.train
    trainer.extend(extensions.observe_lr(), trigger=log_trigger(train))
    trainer.extend(extensions.LogReport(trigger=log_trigger(train)))
    console = TerminalOnly(sys.stdout)
    trainer.extend(extensions.PrintReport(
        ['epoch', 'iteration', 'main/loss', 'main/accuracy', 'validation/main/loss',
         'validation/main/accuracy', 'lr', 'elapsed_time'], out=console),
        trigger=log_trigger(train))
    if config.train.progress and sys.stdout.isatty():  # in a file, a bar is only noise
        trainer.extend(extensions.ProgressBar(update_interval=1, out=console))
    trainer.extend(TensorBoardReport(config.out), trigger=log_trigger(train))
    for name in ('loss', 'accuracy'):
        trainer.extend(extensions.PlotReport(
            ['main/' + name, 'validation/main/' + name],
            'iteration' if train.log_interval else 'epoch',
            trigger=log_trigger(train), file_name=name + '.png'))
    trainer.extend(extensions.snapshot_object(model, 'model.npz', savefun=checkpoint.save_npz),
                   trigger=(config.train.epochs, 'epoch'))


class TensorBoardReport(chainer.training.Extension):
    """Rank 0's log lines (``TENSORBOARD_KEYS`` in each new entry of LogReport's log, and
    images/s since the previous line) as TensorBoard scalars, step = iteration, in event
    files in ``out`` (tensorboardX's ``SummaryWriter``), so that ``tensorboard --logdir
    results`` shows runs side by side. It reads LogReport's entries, not the observation of
    the iteration: an evaluation that ran between two log lines is in the next entry only."""
    priority = chainer.training.PRIORITY_READER
    name = 'tensorboard'

    def __init__(self, out):
        self._out = out
        self._writer = None
        self._written = 0  # how many of LogReport's entries are written
        self._last = None  # (iteration, elapsed time) of the previous point

    def initialize(self, trainer):
        # At a resume LogReport's log holds the earlier run's lines: they were written then.
        self._written = len(trainer.get_extension('LogReport').log)

    def __call__(self, trainer):
        from tensorboardX import SummaryWriter
        entries = trainer.get_extension('LogReport').log
        new, self._written = entries[self._written:], len(entries)
        if not new:
            return
        if self._writer is None:
            self._writer = SummaryWriter(self._out)
        batch = trainer.updater.get_iterator('main').global_batch
        for entry in new:
            step = entry['iteration']
            for key in TENSORBOARD_KEYS:
                if key in entry:
                    self._writer.add_scalar(key, float(entry[key]), step)
            elapsed = entry['elapsed_time']
            since, started = self._last or (0, 0.0)
            if elapsed > started and step > since:
                self._writer.add_scalar('images_per_sec',
                                        (step - since) * batch / (elapsed - started), step)
            self._last = step, elapsed
        self._writer.flush()

    def finalize(self):
        if self._writer is not None:
            self._writer.close()


TENSORBOARD_KEYS = ('main/loss', 'main/accuracy', 'validation/main/loss',
                    'validation/main/accuracy', 'lr')


class TerminalOnly:
    """A text stream that passes terminal control sequences (cursor moves, line erases:
    ``ESC [ ... letter``) on only when ``stream`` is a terminal. chainer's PrintReport
    erases the line before each log line with ``ESC[J``; in a batch job's log file that
    would start every line with it."""

    CONTROL = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        isatty = getattr(self.stream, 'isatty', None)
        if not (isatty and isatty()):
            text = self.CONTROL.sub('', text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def write_config(config, out):
    """The resolved config, so a result folder says how it was made."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, 'config.yaml')
    with naming(path), open(path, 'w') as f:
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
                 '{images_per_sec:.1f} images/s on {ranks} rank{plural}; results in {out}'.format(
                     test, plural='' if summary['ranks'] == 1 else 's', **summary))
    return '\n'.join(lines)


def summarize(trainer, runtime, config):
    """Final numbers for the console: test accuracy, wall time, images/s, where results are."""
    # The last evaluation and the last log line both run at the last iteration (a log line
    # holds the mean of the evaluations since the one before, as chainer's LogReport does).
    log = trainer.get_extension('LogReport').log if runtime.is_root else []
    last_eval = next((e for e in reversed(log) if 'validation/main/accuracy' in e), {})
    elapsed = trainer.elapsed_time
    images = trainer.updater.iteration * trainer.updater.get_iterator('main').global_batch
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
