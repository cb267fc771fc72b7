import chainer
import chainer.functions as F
import chainermn
import numpy
import pytest

from distributed.comm import INPLACE, create_communicator, loss_function
from distributed.config import load_config
from distributed.optim import create_optimizer, create_schedule, scaled_lr, schedule_extension


def test_lr_scaling_rules():
    assert scaled_lr(0.1, 'workers', 8, 32) == pytest.approx(0.8)
    assert scaled_lr(0.1, 'batch', 8, 32) == pytest.approx(0.1)   # global batch 256
    assert scaled_lr(0.1, 'batch', 32, 32) == pytest.approx(0.4)
    assert scaled_lr(0.1, 'none', 8, 32) == pytest.approx(0.1)


def test_warmup_then_step_decay():
    config = load_config(None, ['optimizer.warmup_epochs=5', 'optimizer.warmup_start=auto',
                                'optimizer.decay_epochs=[30,60,80]'])
    schedule = create_schedule(config, ranks=16, iters_per_epoch=100)
    peak = 0.1 * 16
    assert schedule(0) == pytest.approx(peak * 0.5)           # min(8 / 16, 1)
    assert schedule(250) == pytest.approx(peak * 0.75)        # half-way through warm-up
    assert schedule(500) == pytest.approx(peak)
    assert schedule(2999) == pytest.approx(peak)
    assert schedule(3000) == pytest.approx(peak * 0.1)
    assert schedule(6000) == pytest.approx(peak * 0.01)
    assert schedule(8000) == pytest.approx(peak * 0.001)


class Linear(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc = chainer.links.Linear(6, 3, initialW=numpy.arange(18).reshape(3, 6) / 50)
            self.bn = chainer.links.BatchNormalization(3)  # its gamma/beta get no decay

    def forward(self, x, t):
        return F.softmax_cross_entropy(self.fc(x), t)


def update_once(model, optimizer, x, t):
    model.cleargrads()
    loss = model(x, t)
    loss.backward()
    optimizer.update()


@pytest.mark.mpi
@pytest.mark.parametrize('communicator', ['naive', INPLACE])
def test_update_on_n_ranks_equals_one_rank_with_n_times_the_batch(world, communicator):
    """ranks x batch b == 1 rank x batch (ranks x b): the gradient mean across ranks, as the
    trainer reaches it (with the in-place communicator: a pre-divided loss, summed)."""
    comm = create_communicator(communicator)
    rng = numpy.random.RandomState(0)
    b = 4
    x = rng.randn(b * comm.size, 6).astype(numpy.float32)
    t = rng.randint(0, 3, b * comm.size).astype(numpy.int32)
    config = load_config(None, ['optimizer.lr_scaling=none', 'optimizer.weight_decay=0.01'])
    schedule = create_schedule(config, comm.size, iters_per_epoch=10)

    model = Linear()
    optimizer = create_optimizer(config, model, comm, schedule)
    optimizer.update()  # chainermn's first update() only broadcasts rank 0's weights
    lossfun = loss_function(comm, model)
    mine = slice(comm.rank * b, (comm.rank + 1) * b)
    for _ in range(2):  # the second update also checks the momentum buffers
        optimizer.update(lossfun, x[mine], t[mine])

    reference = Linear()
    sgd = chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9)
    sgd.setup(reference)
    reference.fc.W.update_rule.add_hook(chainer.optimizer_hooks.WeightDecay(0.01))
    reference.fc.b.update_rule.add_hook(chainer.optimizer_hooks.WeightDecay(0.01))
    for _ in range(2):
        update_once(reference, sgd, x, t)

    numpy.testing.assert_allclose(model.fc.W.array, reference.fc.W.array, rtol=1e-5, atol=1e-7)
    numpy.testing.assert_allclose(model.fc.b.array, reference.fc.b.array, rtol=1e-5, atol=1e-7)
    assert not numpy.allclose(model.fc.W.array, Linear().fc.W.array)  # it did move
    assert model.fc.W.array.dtype == numpy.float32


def test_weight_decay_skips_batchnorm_beta_and_gamma():
    config = load_config(None, [])
    model = Linear()
    comm = chainermn.create_communicator('naive')
    create_optimizer(config, model, comm, create_schedule(config, 1, 10))
    hooks = {name: list(param.update_rule._hookable._pre_update_hooks)
             for name, param in model.namedparams()}
    assert hooks['/fc/W'] and hooks['/fc/b']
    assert hooks['/bn/gamma'] == [] and hooks['/bn/beta'] == []


def lr_trainer(out, iterations):
    """A 2-iterations-per-epoch trainer with the product's optimizer and schedule: warm-up
    over 2 epochs from 0.5 x 0.1, then x 0.1 from epoch 4. Returns it and {iteration: lr
    the update to that iteration used}."""
    config = load_config(None, ['optimizer.lr=0.1', 'optimizer.lr_scaling=none',
                                'optimizer.warmup_epochs=2', 'optimizer.warmup_start=0.5',
                                'optimizer.decay_epochs=[4]'])
    schedule = create_schedule(config, 1, iters_per_epoch=2)
    model = Linear()
    optimizer = create_optimizer(config, model, create_communicator('naive'), schedule)
    rng = numpy.random.RandomState(0)
    data = chainer.datasets.TupleDataset(rng.rand(8, 6).astype(numpy.float32),
                                         numpy.arange(8, dtype=numpy.int32) % 3)
    updater = chainer.training.StandardUpdater(
        chainer.iterators.SerialIterator(data, 4, shuffle=False), optimizer)
    trainer = chainer.training.Trainer(updater, (iterations, 'iteration'), out=str(out))
    trainer.extend(schedule_extension(schedule))
    used = {}

    # Before the schedule's extension, as observe_lr: the lr the update just used, read
    # where the update reads it.
    @chainer.training.make_extension(trigger=(1, 'iteration'),
                                     priority=chainer.training.PRIORITY_WRITER)
    def record(trainer):
        used[trainer.updater.iteration] = model.fc.W.update_rule.hyperparam.lr
    trainer.extend(record)
    return trainer, used


def test_trainer_updates_follow_the_warmup_then_the_decay_also_after_a_resume(tmp_path):
    # Update k starts at iteration k - 1 and uses schedule(k - 1).
    expected = {1: 0.05, 2: 0.0625, 3: 0.075, 4: 0.0875, 5: 0.1, 6: 0.1, 7: 0.1, 8: 0.1,
                9: 0.01, 10: 0.01}
    trainer, used = lr_trainer(tmp_path / 'straight', 10)
    trainer.run()
    assert used == pytest.approx(expected)
    # Stopped after 5 updates and resumed from the trainer's state: the optimizer's lr is
    # not in that state, the schedule sets it from the restored iteration.
    first, _ = lr_trainer(tmp_path / 'resumed', 5)
    first.run()
    chainer.serializers.save_npz(str(tmp_path / 'trainer.npz'), first)
    second, used = lr_trainer(tmp_path / 'resumed', 10)
    chainer.serializers.load_npz(str(tmp_path / 'trainer.npz'), second)
    second.run()
    assert used == pytest.approx({k: v for k, v in expected.items() if k > 5})
