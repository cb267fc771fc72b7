"""One optimizer update per global batch, whatever share of its chunks this rank computes.

A rank of a run on ``N`` ranks with ``C`` chunks per global batch computes ``C / N``
chunks (``stream.ChunkIterator``). Each chunk goes forward and backward on its own, so
BatchNorm normalises each chunk as a rank of a ``C``-rank run normalises its batch; the
gradients accumulate, then one allreduce and one update follow (momentum, weight decay and
the step count once per global batch). ChainerMN's multi-node optimizer clears the
gradients inside ``update(lossfun)``, so the updater drives the backward passes itself and
calls ``update()`` without a loss function, which reduces and updates the gradients held.
"""
import chainer

from distributed.model import batchnorm_statistics


class ChunkUpdater(chainer.training.updaters.StandardUpdater):
    """``StandardUpdater`` over a ``ChunkIterator``: a batch is a list of chunks.

    Each chunk's loss is multiplied by ``1 / chunks on this rank`` before its backward
    pass (and by the optimizer's loss scale, under mixed16), so after the gradient mean
    over ranks the gradient is the global batch's mean loss's. ``loss_func`` is what the
    communicator wants called for the loss (``comm.loss_function``). The reported
    ``main/*`` numbers are the means over this rank's chunks (equal sizes: the mean over
    its images). BatchNorm running statistics get one update per global batch with the
    mean of the chunks' statistics (``model.batchnorm_statistics``), as a ``C``-rank run's averaged
    statistics get, not one decay per chunk.
    """

    def __init__(self, iterator, optimizer, converter, device, loss_func):
        super().__init__(iterator, optimizer, converter=converter, device=device,
                         loss_func=loss_func)
        self._statistics = batchnorm_statistics(optimizer.target)

    def update_core(self):
        chunks = self.get_iterator('main').next()
        optimizer = self.get_optimizer('main')
        model = optimizer.target
        weight = 1.0 / len(chunks)
        loss_scale = getattr(optimizer, '_loss_scale', None)
        before = [array.copy() for array in self._statistics] if len(chunks) > 1 else None
        after = [array * 0 for array in before] if before else None
        reporter = chainer.reporter.get_current_reporter()
        sums = {}
        model.cleargrads()
        for chunk in chunks:
            x, t = self.converter(chunk, self.device)
            observed = {}
            with reporter.scope(observed):
                loss = self.loss_func(x, t) * weight
            loss.backward(loss_scale=loss_scale)
            del loss
            for key, value in observed.items():
                value = value.array if isinstance(value, chainer.Variable) else value
                sums[key] = sums[key] + value if key in sums else value
            if before:
                for array, start, total in zip(self._statistics, before, after):
                    total += array
                    array[...] = start
        if before:
            for array, total in zip(self._statistics, after):
                array[...] = total * weight
        chainer.reporter.report({key: value * weight for key, value in sums.items()})
        optimizer.update()
