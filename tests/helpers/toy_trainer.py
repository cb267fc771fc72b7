"""Toy trainers over the product's own stream, updater, checkpointer and collective
extensions, for the unit tests of checkpoints and of the collective extensions."""
import json
from types import SimpleNamespace

import distributed  # noqa: F401
import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy
from chainer.training import extensions

from distributed.across_ranks import MeanAcrossRanks
from distributed.checkpoint.extension import attach
from distributed.checkpoint.files import FORMAT
from distributed.model import seed_random_state
from distributed.config import CheckpointConfig, load_config, to_dict
from distributed.data.datasets import StreamExamples
from distributed.data.stream import ChunkIterator
from distributed.data.transforms import draws
from distributed.updater import ChunkUpdater
from distributed.liveness import StopSignal


class Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc1 = L.Linear(6, 8)
            self.bn = L.BatchNormalization(8)
            self.fc2 = L.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def noisy(in_data):
    """A random augmentation drawing from the example's key, as the product's do."""
    x, t, key = in_data
    return x + draws(key).normal(0, 0.1, x.shape).astype(numpy.float32), t


CHUNKS = 2


def record(ranks, *overrides):
    """A run's record as ``checkpoint.resume.describe_run`` makes it, for the toy trainer."""
    overrides = ('train.chunks={}'.format(CHUNKS),) + overrides
    return {'format': FORMAT, 'config': to_dict(load_config(None, overrides)),
            'ranks': ranks, 'data': {'train_images': 10, 'train_sha256': 'toy'}}


def make_trainer(out, iterations, interval=2, keep=3, seed=0):
    """The product's stream, updater and checkpoints over a toy net: 2 chunks of 2
    examples per global batch, on 1 or 2 ranks; on 2 each rank sees its own chunk, so
    its BatchNorm statistics are its own; rank 0 writes."""
    comm = chainermn.create_communicator('naive')
    seed_random_state(seed)
    pairs = list(zip(numpy.random.RandomState(1).rand(10, 6).astype(numpy.float32),
                     numpy.arange(10, dtype=numpy.int32) % 3))
    data = chainer.datasets.TransformDataset(StreamExamples(pairs, seed), noisy)
    model = L.Classifier(Net())
    optimizer = chainermn.create_multi_node_optimizer(
        chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9), comm)
    optimizer.setup(model)
    it = ChunkIterator(data, len(pairs), 2, CHUNKS, comm.size, comm.rank)
    updater = ChunkUpdater(it, optimizer, chainer.dataset.concat_examples, None, model)
    trainer = chainer.training.Trainer(updater, (iterations, 'iteration'), out=str(out))
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    stop_signal = StopSignal()
    stop_signal.install()
    attach(trainer, SimpleNamespace(comm=comm, is_root=comm.rank == 0),
           CheckpointConfig(interval=interval, keep=keep), stop_signal,
           record(comm.size) if comm.rank == 0 else None)
    return trainer, comm


def weights(trainer):
    model = trainer.updater.get_optimizer('main').target
    state = trainer.updater.get_optimizer('main').target.namedparams()
    out = {name: p.array.copy() for name, p in state}
    out['bn/avg_mean'] = model.predictor.bn.avg_mean.copy()
    for name, param in model.namedparams():
        out['v' + name] = param.update_rule.state['v'].copy()
    return out


def run(trainer):
    try:
        trainer.run()
    finally:
        trainer.get_extension('checkpointer').stop_signal.uninstall()


def text_array(value):
    return numpy.frombuffer(json.dumps(value).encode(), numpy.uint8)


def batchnorm_statistics(trainer):
    bn = trainer.updater.get_optimizer('main').target.predictor.bn
    return {name: numpy.array(getattr(bn, name)) for name in ('avg_mean', 'avg_var', 'N')}


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
