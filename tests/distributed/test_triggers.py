"""distributed.triggers: when logs and evaluations run."""
import chainer
import numpy
import pytest

from distributed.triggers import EveryAndAtEnd


@pytest.mark.parametrize('every, fired', [
    ((3, 'iteration'), [3, 6, 9, 10]),
    ((1, 'epoch'), [4, 8, 10]),
    ((0.5, 'epoch'), [2, 4, 6, 8, 10]),
    ((4, 'epoch'), [10]),
])
def test_logs_and_evaluations_run_every_interval_and_at_the_last_iteration(every, fired):
    # 4 iterations an epoch, 2.5 epochs: the run ends at iteration 10, mid-interval.
    data = numpy.zeros((4, 1), numpy.float32)
    model = chainer.links.Linear(1, 1)
    updater = chainer.training.StandardUpdater(
        chainer.iterators.SerialIterator(data, 1), chainer.optimizers.SGD().setup(model),
        loss_func=lambda x: chainer.functions.sum(model(x)))
    trainer = chainer.training.Trainer(updater, (2.5, 'epoch'))
    seen = []
    trainer.extend(lambda t: seen.append(t.updater.iteration),
                   trigger=EveryAndAtEnd(every, 2.5))
    trainer.run()
    assert seen == fired
