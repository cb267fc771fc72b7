"""Checkpoints in one process: naming, retention, atomic writes, exact resume, signals."""
import os
import signal

import distributed  # noqa: F401
import chainer
import chainer.functions as F
import chainer.links as L
import chainermn
import numpy
import pytest
from chainer.training import extensions

from distributed import checkpoint


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
    """A random augmentation drawing from numpy's global generator, like chainercv's."""
    x, t = in_data
    return x + numpy.random.normal(0, 0.1, x.shape).astype(numpy.float32), t


def make_trainer(out, iterations, interval=2, keep=3, seed=0):
    comm = chainermn.create_communicator('naive')
    checkpoint.seed_random_state(seed, 0)
    data = chainer.datasets.TransformDataset(chainer.datasets.TupleDataset(
        numpy.random.RandomState(1).rand(10, 6).astype(numpy.float32),
        numpy.arange(10, dtype=numpy.int32) % 3), noisy)
    model = L.Classifier(Net())
    optimizer = chainermn.create_multi_node_optimizer(
        chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9), comm)
    optimizer.setup(model)
    it = chainer.iterators.SerialIterator(
        data, 4, order_sampler=chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(seed)))
    updater = chainer.training.StandardUpdater(it, optimizer)
    trainer = chainer.training.Trainer(updater, (iterations, 'iteration'), out=str(out))
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    checkpoint.attach(trainer, comm, True, interval, keep)
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


def test_find_latest_takes_the_highest_finished_iteration(tmp_path):
    assert checkpoint.find_latest(str(tmp_path)) is None
    assert checkpoint.find_latest(str(tmp_path / 'absent')) is None
    for name in ('snapshot_iter_9.npz', 'snapshot_iter_10.npz', 'snapshot_iter_2.npz',
                 'snapshot_iter_11.npz.part', 'model.npz'):
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / 'tmpsnapshot_iter_12.npzabc').mkdir()
    assert checkpoint.find_latest(str(tmp_path)) == str(tmp_path / 'snapshot_iter_10.npz')


def test_resolve_settings(tmp_path):
    out = str(tmp_path)
    assert checkpoint.resolve('', out) is None
    assert checkpoint.resolve('auto', out) is None
    with pytest.raises(checkpoint.CheckpointError, match='no such checkpoint'):
        checkpoint.resolve(str(tmp_path / 'nope.npz'), out)
    with pytest.raises(checkpoint.CheckpointError, match='holds no checkpoint'):
        checkpoint.resolve(out, out)
    (tmp_path / 'snapshot_iter_4.npz').write_bytes(b'x')
    assert checkpoint.resolve('auto', out) == str(tmp_path / 'snapshot_iter_4.npz')
    assert checkpoint.resolve(out, out) == str(tmp_path / 'snapshot_iter_4.npz')


def test_interval_and_keep(tmp_path):
    trainer, _ = make_trainer(tmp_path, 9, interval=2, keep=2)
    run(trainer)
    # Every 2 iterations, at each epoch end (10 samples, batch 4) and at the end; keep 2.
    assert sorted(os.listdir(tmp_path)) == ['log', 'snapshot_iter_8.npz', 'snapshot_iter_9.npz']


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path):
    trainer, _ = make_trainer(tmp_path, 2, interval=2)
    run(trainer)
    good = (tmp_path / 'snapshot_iter_2.npz').read_bytes()

    def dies_midway(path, target):
        with open(path, 'wb') as f:
            f.write(good[:100])
        raise OSError('disk full')

    writer = chainer.training.extensions.snapshot_writers.SimpleWriter(savefun=dies_midway)
    with pytest.raises(OSError):
        writer('snapshot_iter_3.npz', str(tmp_path), {})
    assert checkpoint.find_latest(str(tmp_path)) == str(tmp_path / 'snapshot_iter_2.npz')
    assert not os.path.exists(tmp_path / 'snapshot_iter_3.npz')


def test_resume_is_exact(tmp_path):
    straight, _ = make_trainer(tmp_path / 'straight', 10)
    run(straight)
    first, _ = make_trainer(tmp_path / 'resumed', 5)
    run(first)
    # A different seed proves the restored state, not the seed, drives the rest.
    second, comm = make_trainer(tmp_path / 'resumed', 10, seed=7)
    path, iteration = checkpoint.load(second, comm, True, 'auto', str(tmp_path / 'resumed'))
    assert (os.path.basename(path), iteration) == ('snapshot_iter_5.npz', 5)
    run(second)
    expected, got = weights(straight), weights(second)
    assert expected.keys() == got.keys()
    for name in expected:
        numpy.testing.assert_array_equal(expected[name], got[name], err_msg=name)
    log = second.get_extension('LogReport').log
    assert [e['iteration'] for e in log] == list(range(1, 11))


def test_a_signal_stops_after_a_checkpoint(tmp_path):
    trainer, _ = make_trainer(tmp_path, 1000, interval=0)
    checkpointer = trainer.get_extension('checkpointer')

    def send_at_3(trainer):
        if trainer.updater.iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    trainer.extend(send_at_3, trigger=(1, 'iteration'))
    run(trainer)
    assert checkpointer.stopped_by == signal.SIGTERM
    assert trainer.updater.iteration == 3
    assert checkpoint.find_latest(str(tmp_path)) == str(tmp_path / 'snapshot_iter_3.npz')
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_resume_with_a_foreign_file_is_a_clear_error(tmp_path):
    (tmp_path / 'snapshot_iter_3.npz').write_bytes(b'not a checkpoint')
    trainer, comm = make_trainer(tmp_path, 5)
    with pytest.raises(checkpoint.CheckpointError, match='snapshot_iter_3.npz'):
        checkpoint.load(trainer, comm, True, 'auto', str(tmp_path))
    trainer.get_extension('checkpointer').stop_signal.uninstall()
