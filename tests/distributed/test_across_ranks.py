"""distributed.across_ranks: the log's means over ranks and iterations, BatchNorm statistics
averaged over the ranks."""
import chainer
import chainermn
import numpy
import pytest

from distributed.across_ranks import MeanBatchNormStatistics
from toy_trainer import tiny_trainer


@pytest.mark.mpi
def test_the_log_holds_means_over_ranks_and_iterations_only():
    comm = chainermn.create_communicator('naive')
    trainer, seen = tiny_trainer(comm, 6, (2, 'iteration'))
    trainer.run()
    log = trainer.get_extension('LogReport').log
    # Iterations 2k-1, 2k see x = 2k-2, 2k-1; rank r reports x * (r + 1).
    ranks_mean = numpy.mean([r + 1 for r in range(comm.size)])
    for k, entry in enumerate(log, 1):
        assert entry['iteration'] == 2 * k
        assert entry['main/loss'] == pytest.approx((2 * k - 1.5) * ranks_mean)
        assert entry['main/accuracy'] == pytest.approx(-(2 * k - 1.5) * ranks_mean)
    assert len(log) == 3
    # A reader between triggers sees no rank-local number.
    assert seen == [False, True] * 3


def test_sums_between_triggers_survive_a_checkpoint():
    from mpi4py import MPI
    comm = chainermn.create_communicator('naive', MPI.COMM_SELF)
    trainer, _ = tiny_trainer(comm, 3, (4, 'iteration'))
    trainer.run()
    saved = chainer.serializers.DictionarySerializer()
    trainer.get_extension('mean_across_ranks').serialize(saved)
    again, _ = tiny_trainer(comm, 3, (4, 'iteration'))
    extension = again.get_extension('mean_across_ranks')
    extension.serialize(chainer.serializers.NpzDeserializer(saved.target))
    # x = 0, 1, 2: three iterations summing to 3, kept whole.
    assert extension._counts == {'main/loss': 3, 'main/accuracy': 3}
    assert float(extension._shares()[0]) == pytest.approx(3.0)


@pytest.mark.mpi
def test_batchnorm_running_statistics_are_averaged_over_the_ranks(world):
    # Each rank's running statistics are its own shard's; before an evaluation every rank
    # takes their mean, so that all evaluate (and rank 0 saves) the same model.
    comm = chainermn.create_communicator('naive')
    model = chainer.Sequential(chainer.links.Linear(2, 3), chainer.links.BatchNormalization(3))
    bn = model[1]
    bn.avg_mean[...] = comm.rank + 1
    bn.avg_var[...] = 2.0 * (comm.rank + 1)
    weights = model[0].W.array.copy()
    MeanBatchNormStatistics(comm, model, (1, 'iteration'))(None)
    ranks_mean = numpy.mean([r + 1 for r in range(comm.size)])
    numpy.testing.assert_allclose(bn.avg_mean, numpy.full(3, ranks_mean, numpy.float32))
    numpy.testing.assert_allclose(bn.avg_var, numpy.full(3, 2 * ranks_mean, numpy.float32))
    assert bn.avg_mean.dtype == numpy.float32
    numpy.testing.assert_array_equal(model[0].W.array, weights)  # weights untouched
