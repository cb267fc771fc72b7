"""Rank 0's reports of a run: the log, the console, TensorBoard, the plots, the saved model,
the results folder's config.yaml and the closing summary."""
import os
import re
import sys

import chainer
import yaml
from chainer.training import extensions

from distributed.checkpoint.files import save_npz
from distributed.config import to_dict
from distributed.failures import naming
from distributed.triggers import log_trigger


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
    trainer.extend(extensions.snapshot_object(model, 'model.npz', savefun=save_npz),
                   trigger=(config.train.epochs, 'epoch'))


class TensorBoardReport(chainer.training.Extension):
    """Rank 0's log lines (``TENSORBOARD_KEYS`` in each new entry of LogReport's log, and
    images/s since the previous line) as TensorBoard scalars, step = iteration, in event
    files in ``out`` (tensorboardX's ``SummaryWriter``), so that ``tensorboard --logdir
    results`` shows runs side by side. It reads LogReport's entries, not the observation of
    the iteration: an evaluation that ran between two log lines is in the next entry only."""
    priority = chainer.training.PRIORITY_READER  # after the numbers are made global
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
