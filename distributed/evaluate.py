"""Testing a trained model: exact top-k counts, a confusion matrix and the summed loss
over all ranks.

Every rank counts its shard of the split; one integer allreduce makes the totals, so any
number of ranks gives exactly the numbers of a single process, uneven shards included.
The softmax cross-entropy is summed per rank in float64 and allreduced as the trainer's
per-epoch evaluation sums it, so the mean loss agrees with the logged one to float
tolerance. Rank 0 prints the report and writes ``eval.json`` and ``confusion.png`` into
``out``.
"""
import dataclasses
import json
import math
import os
import sys
import typing

import chainer
import chainer.functions as F
import chainermn
import numpy

from distributed.config import Config, ConfigError, ModelConfig, build, validate
from distributed.data import read_on_root, sop, split_empty, unreadable_report
from distributed.data.datasets import decoded
from distributed.data.transforms import ValTransform
from distributed.model import mean_of
from distributed.weights import load_model, weights_path
from distributed.data.converter import InputConverter
from distributed.failures import naming

TOP_K = (1, 5)


@dataclasses.dataclass
class WeightsModelConfig(ModelConfig):
    path: str = ''
    """The trained weights: a model.npz or a checkpoint (snapshot_iter_<N>.npz) written by
    launch.train ('' means out/model.npz)."""


@dataclasses.dataclass
class EvalConfig(Config):
    model: WeightsModelConfig = dataclasses.field(default_factory=WeightsModelConfig)
    """Network and its trained weights (model=PATH is short for model.path=PATH)."""
    split: typing.Literal['test', 'train'] = 'test'
    """The SOP split to evaluate on: 'test' or 'train'."""


def expand_shorthand(overrides):
    """``model=PATH`` names the weights file; ``model`` is also the network's section."""
    return ['model.path=' + o[len('model='):] if o.startswith('model=') else o
            for o in overrides]


def load_eval_config(path=None, overrides=()):
    """The validated ``EvalConfig`` (the training keys are read and checked too)."""
    return validate(build(EvalConfig, path, expand_shorthand(overrides)))


def topk_hits(scores, labels, k):
    """Whether each row's label is among its ``k`` highest scores (ties: lower index first)."""
    top = numpy.argsort(-scores, axis=1, kind='stable')[:, :min(k, scores.shape[1])]
    return (top == labels[:, None]).any(axis=1)


def softmax_cross_entropy_sum(scores, labels):
    """The softmax cross-entropy of each row of ``scores`` against its label, summed.

    ``scores``: (batch, classes) unnormalised scores, any float dtype (cast to float32, as
    training's loss is); ``labels``: (batch,) integer class ids; both NumPy or both CuPy
    arrays (or chainer Variables). Returns a Python float in nats, each image's loss computed
    in float32 and the sum taken in float64, so that sums over batches and ranks, divided by
    the image count, are the split's mean loss to float tolerance whatever the batching.
    Raises chainer's ``InvalidType`` for mismatched shapes or a non-integer ``labels``.
    """
    loss = F.softmax_cross_entropy(F.cast(scores, numpy.float32), labels, reduce='no').array
    return float(loss.sum(dtype=numpy.float64))


@dataclasses.dataclass
class Counts:
    confusion: numpy.ndarray
    """(classes, classes) int64: rows are true classes, columns top-1 predictions."""
    hits: numpy.ndarray
    """(len(TOP_K), classes) int64: images of each true class whose label is in the top k."""
    loss: float = 0.0
    """The images' softmax cross-entropy summed (``softmax_cross_entropy_sum``), nats."""

    @classmethod
    def zeros(cls, n_class):
        return cls(numpy.zeros((n_class, n_class), numpy.int64),
                   numpy.zeros((len(TOP_K), n_class), numpy.int64))

    def add(self, scores, labels):
        scores, labels = numpy.asarray(scores), numpy.asarray(labels, dtype=numpy.int64)
        self.loss += softmax_cross_entropy_sum(scores, labels)
        top1 = numpy.argsort(-scores, axis=1, kind='stable')[:, 0]
        numpy.add.at(self.confusion, (labels, top1), 1)
        for row, k in zip(self.hits, TOP_K):
            numpy.add.at(row, labels, topk_hits(scores, labels, k).astype(numpy.int64))


def allreduce_counts(counts, comm):
    """The sum of every rank's counts, in one allreduce of integers (exact), and of their
    losses, in one of a float64 (exact but for the order of the ranks' sums)."""
    flat = numpy.concatenate([counts.confusion.ravel(), counts.hits.ravel()])
    total = comm.mpi_comm.allreduce(flat)
    n = counts.confusion.size
    return Counts(total[:n].reshape(counts.confusion.shape),
                  total[n:].reshape(counts.hits.shape),
                  float(comm.mpi_comm.allreduce(numpy.float64(counts.loss))))


def summarize(counts, names=sop.SUPER_CLASS_NAMES):
    """The ``eval.json`` content: ``n``, ``top1``, ``top5``, ``loss`` (the mean softmax
    cross-entropy over the images, nats), ``per_class``, ``confusion``."""
    n = int(counts.confusion.sum())
    totals = counts.hits.sum(axis=1)
    per_class = []
    for i, name in enumerate(names):
        count = int(counts.confusion[i].sum())
        per_class.append({
            'id': i, 'name': name, 'count': count, 'correct': int(counts.confusion[i, i]),
            'accuracy': int(counts.confusion[i, i]) / count if count else None,
            'top5': int(counts.hits[TOP_K.index(5), i]) / count if count else None})
    result = {'n': n}
    for k, total in zip(TOP_K, totals):
        result[f'top{k}'] = int(total) / n if n else None
    result['loss'] = counts.loss / n if n else None
    result['per_class'] = per_class
    result['confusion'] = counts.confusion.tolist()
    return result


def format_report(result, split='test'):
    """The console table: overall top-1 / top-5 and mean loss, then accuracy and count per
    super-class."""
    def pct(v):
        return '   -  ' if v is None else f'{v:6.1%}'
    lines = ['{} split: {} images, top-1 {}, top-5 {}, loss {}'.format(
        split, result['n'], pct(result['top1']).strip(), pct(result['top5']).strip(),
        '-' if result['loss'] is None else '{:.4f}'.format(result['loss'])),
        '  {:>2}  {:<14}{:>8}{:>8}{:>7}'.format('id', 'super-class', 'top-1', 'top-5', 'count')]
    for row in result['per_class']:
        lines.append('  {:>2}  {:<14}{:>8}{:>8}{:>7}'.format(
            row['id'], row['name'], pct(row['accuracy']), pct(row['top5']), row['count']))
    return '\n'.join(lines)


def plot_confusion(confusion, path, names=sop.SUPER_CLASS_NAMES, title='confusion'):
    """Row-normalised confusion matrix as a PNG (rows: true class, columns: predicted)."""
    # Figure without pyplot renders with Agg and leaves the global backend alone.
    from matplotlib.figure import Figure
    confusion = numpy.asarray(confusion, dtype=numpy.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    norm = numpy.divide(confusion, rows, out=numpy.zeros_like(confusion), where=rows > 0)
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
    ticks = range(len(names))
    ax.set_xticks(ticks, labels=names, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(ticks, labels=[f'{nm} ({int(r)})' for nm, r in zip(names, rows[:, 0])],
                  fontsize=8)
    ax.set_xlabel('predicted super-class')
    ax.set_ylabel('true super-class (images)')
    ax.set_title(title)
    for (i, j), v in numpy.ndenumerate(norm):
        if confusion[i, j]:
            ax.text(j, i, f'{v:.2f}'.lstrip('0'), ha='center', va='center', fontsize=6,
                    color='white' if v > 0.5 else 'black')
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def load_shard(config, runtime):
    """This rank's part of ``config.split``, decoded as training's evaluation decodes it;
    shards differ in length by at most one image."""
    dataset, = read_on_root(config, runtime, (config.split,), lambda root, datasets: split_empty(
        root, config.split, len(datasets[0]), 'launch.evaluate'))
    # Equal-length shards would repeat images and change the counts.
    shard = chainermn.scatter_dataset(dataset, runtime.comm, force_equal_length=False)
    # An undecodable file becomes None and is not counted (data.on_bad_image=skip).
    return decoded(shard, ValTransform(config.data.crop_size, config.data.scale_size), config,
                   runtime.rank, substitute=False)


class Progress:
    """Batches done, on a stream: every batch, rewritten in place, on a terminal; in a file
    (a batch job's log) at most ``LINES`` lines, the last one at the end."""

    LINES = 10

    def __init__(self, what, total, stream=sys.stderr):
        self.what, self.total, self.stream = what, total, stream
        self.tty = stream.isatty()
        self.every = 1 if self.tty else math.ceil(total / self.LINES)

    def __call__(self, done):
        if done % self.every and done != self.total:
            return
        end = '\r' if self.tty and done != self.total else '\n'
        self.stream.write(f'{self.what}: batch {done}/{self.total}{end}')
        self.stream.flush()


def count_shard(model, dataset, config, device, progress=None):
    """Counts of this rank's shard, one forward pass per batch in test mode."""
    counts = Counts.zeros(len(sop.SUPER_CLASS_NAMES))
    batch_size = config.train.eval_batch_size or config.train.batch_size
    if len(dataset) == 0:
        return counts
    if config.data.loader == 'multiprocess':
        iterator = chainer.iterators.MultiprocessIterator(
            dataset, batch_size, repeat=False, shuffle=False, n_processes=config.data.workers)
    else:
        iterator = chainer.iterators.SerialIterator(dataset, batch_size, repeat=False,
                                                    shuffle=False)
    cpu = chainer.backend.CpuDevice()
    converter = InputConverter(mean_of(model))
    try:
        for i, batch in enumerate(iterator, 1):
            batch = [example for example in batch if example is not None]
            if not batch:
                continue
            x, t = converter(batch, device)
            with chainer.using_config('train', False), chainer.no_backprop_mode():
                y = model.predictor(x)
            counts.add(cpu.send(y.array), cpu.send(t))
            if progress:
                progress(i)
    finally:
        iterator.finalize()
    return counts


def evaluate(config, runtime):
    """Top-k accuracy, mean loss, per-class table and confusion of the whole split, on every
    rank.

    Rank 0 shows progress and writes ``eval.json`` and ``confusion.png`` into ``out``.
    """
    error = None
    try:
        model = load_model(config)
    except ConfigError as e:
        error = str(e)
    # A rank that cannot load the weights must not leave the others in a collective.
    errors = [e for e in runtime.comm.mpi_comm.allgather(error) if e]
    if errors:
        raise ConfigError(errors[0])
    dataset = load_shard(config, runtime)
    model.to_device(runtime.device)
    batch_size = config.train.eval_batch_size or config.train.batch_size
    shown = None
    if runtime.is_root:
        shown = Progress(f'evaluate {config.split} (rank 0 of {runtime.size})',
                         math.ceil(len(dataset) / batch_size))

    def progress(done):
        runtime.watchdog.progress(f'evaluation batch {done}')
        if shown:
            shown(done)
    counts = count_shard(model, dataset, config, runtime.device, progress)
    result = summarize(allreduce_counts(counts, runtime.comm))
    runtime.watchdog.stop()
    result['skipped'], result['skipped_report'] = unreadable_report((dataset,), runtime.comm)
    if runtime.is_root:
        write_results(result, config)
    return result


def write_results(result, config):
    os.makedirs(config.out, exist_ok=True)
    path = os.path.join(config.out, 'eval.json')
    with naming(path), open(path, 'w') as f:
        json.dump(dict(result, split=config.split, model=weights_path(config)), f, indent=1)
        f.write('\n')
    plot_confusion(result['confusion'], os.path.join(config.out, 'confusion.png'),
                   title='{} split, {} images: top-1 {:.1%}'.format(
                       config.split, result['n'], result['top1'] or 0.0))
