"""What is reduced across ranks: numbers for the log, the test-split evaluation, BatchNorm
statistics; each a collective step run by every rank."""
import chainer
import numpy

from distributed.evaluate import softmax_cross_entropy_sum
from distributed.model import batchnorm_statistics
from distributed.triggers import PRIORITY


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
    priority = PRIORITY['mean_across_ranks']
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
    priority = PRIORITY['validation']
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
    the ranks (``mean_batchnorm_statistics``).

    In training mode BatchNorm normalises with each chunk's own statistics; the running
    ones serve only evaluation and the saved model, and each rank accumulates its own
    from its chunks. Averaged before each evaluation, every rank evaluates the same model,
    the one rank 0 saves: the logged test accuracy is ``model.npz``'s. Training itself is
    unchanged.
    """
    priority = PRIORITY['mean_batchnorm_statistics']  # before the evaluator and the savers
    name = 'mean_batchnorm_statistics'

    def __init__(self, comm, model, trigger):
        self._comm = comm
        self._model = model
        self.trigger = trigger

    def __call__(self, trainer):
        mean_batchnorm_statistics(self._model, self._comm)


def mean_batchnorm_statistics(model, comm):
    """Replace every BatchNorm running statistic (``avg_mean``, ``avg_var``) of ``model`` by
    its mean over the ranks of ``comm``, with one float64 allreduce through the host;
    collective.

    ChainerMN's ``extensions.AllreducePersistent`` does the same with one MPI allreduce per
    array, each on the array where it lives: on a GPU that hands MPI a device pointer,
    which only a CUDA-aware MPI can read (docs/clusters.md: `flat` needs one too).
    """
    from mpi4py import MPI
    arrays = batchnorm_statistics(model)
    if comm.size == 1 or not arrays:
        return
    cpu = chainer.backend.CpuDevice()
    total = numpy.concatenate([cpu.send(a).ravel().astype(numpy.float64) for a in arrays])
    comm.mpi_comm.Allreduce(MPI.IN_PLACE, total)
    total /= comm.size
    start = 0
    for array in arrays:
        mean = total[start:start + array.size].reshape(array.shape).astype(array.dtype)
        array[...] = chainer.backend.get_device_from_array(array).send(mean)
        start += array.size
