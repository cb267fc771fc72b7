"""The run's train stream, defined once for the whole job, whatever its rank count.

The stream is the train split in one permutation per epoch, drawn from
``(train.seed, epoch)``, epoch after epoch; position ``p`` of the stream is image
``permutation(p // n)[p % n]`` of the ``n`` images. It is cut into global batches of
``chunks`` x ``batch_size`` images: global batch ``i`` holds positions
``[i * G, (i + 1) * G)`` with ``G = chunks * batch_size``, and its chunk ``k`` the
``batch_size`` positions from ``i * G + k * batch_size``. No image is left out to make
shards equal: a global batch may span the end of one epoch and the start of the next, as
chainer's iterators do. On ``N`` ranks (``N`` dividing ``chunks``) rank ``r`` takes chunks
``r * chunks / N`` to ``(r + 1) * chunks / N - 1`` of every global batch, so chunk ``k``
is the same images at any rank count. Each image's augmentation draws from
``(train.seed, epoch, position in the epoch)`` (``datasets.StreamExamples`` gives the key,
``TrainTransform`` draws), never from a process's generators: serial or multiprocess
loader, 1 rank or ``chunks`` ranks, the same image gets the same crop and flip at the
same step.
"""
import multiprocessing

import chainer
import numpy


def permutation(seed, epoch, images):
    """The order of the ``images`` images in ``epoch`` (int64 array), from NumPy's
    ``SeedSequence`` of ``(seed, epoch)``: the same in every process and rank."""
    return numpy.random.default_rng([seed, epoch]).permutation(images)


def parts_of_rank(chunks, batch_size, ranks, rank):
    """What ``rank`` of ``ranks`` computes of every global batch: a list of ``(chunk,
    first image in it, images)``. Up to ``chunks`` ranks (dividing it) each takes whole
    chunks; more ranks (a multiple of ``chunks``, and dividing each chunk's
    ``batch_size`` images: ``train.split_chunks``) each take an equal part of one chunk,
    which BatchNorm then normalises on its own. Raises ``ValueError`` for other counts."""
    if chunks % ranks == 0:
        per_rank = chunks // ranks
        return [(k, 0, batch_size) for k in range(rank * per_rank, (rank + 1) * per_rank)]
    split, rest = divmod(ranks, chunks)
    if rest or batch_size % split:
        raise ValueError('{} ranks cannot share {} chunks of {} images'.format(
            ranks, chunks, batch_size))
    size = batch_size // split
    return [(rank // split, rank % split * size, size)]


_worker_examples = None
"""A loader worker's copy of the examples, set once when the worker starts."""


def _start_worker(examples):
    global _worker_examples
    _worker_examples = examples


def _load(position):
    return _worker_examples[position]


class ChunkIterator(chainer.dataset.Iterator):
    """This rank's chunks of the stream's global batches: ``next()`` returns a list of
    chunks (each a list of ``batch_size`` examples, or of a part of a chunk on more ranks
    than chunks, of ``examples``, a ``datasets.StreamExamples``
    wrapped as the loader decodes it), the rank's part of one global batch.

    Its state is the global position alone (global batches done), the same on every rank;
    ``epoch``, ``epoch_detail`` and ``is_new_epoch`` count epochs of the train split in
    global batches, so every rank reports the same progress. With ``workers`` > 0 the
    examples are decoded in that many worker processes of a pool in the current
    multiprocessing context (the launcher's forkserver), the next global batch's while
    this one trains.
    """

    def __init__(self, examples, images, batch_size, chunks, ranks, rank, workers=0):
        self.examples = examples
        self.images = images
        self.batch_size = batch_size
        self.chunks = chunks
        self.mine = parts_of_rank(chunks, batch_size, ranks, rank)
        self.batches = 0
        self.is_new_epoch = False
        self._workers = workers
        self._pool = None
        self._ahead = None  # (global batch index, async result) of the prefetched batch

    @property
    def global_batch(self):
        """Images per global batch: ``chunks`` x ``batch_size``."""
        return self.chunks * self.batch_size

    @property
    def epoch_detail(self):
        return self.batches * self.global_batch / self.images

    @property
    def previous_epoch_detail(self):
        if self.batches == 0:
            return None
        return (self.batches - 1) * self.global_batch / self.images

    @property
    def epoch(self):
        return self.batches * self.global_batch // self.images

    @property
    def current_position(self):
        """Position of the next image in its epoch."""
        return self.batches * self.global_batch % self.images

    def positions(self, batch):
        """The stream positions of this rank's chunks (or part of a chunk) of global batch
        ``batch``: a list of lists of positions."""
        start = batch * self.global_batch
        return [list(range(start + k * self.batch_size + first,
                           start + k * self.batch_size + first + size))
                for k, first, size in self.mine]

    def _fetch(self, batch):
        flat = [p for chunk in self.positions(batch) for p in chunk]
        if not self._workers:
            return [self.examples[p] for p in flat]
        if self._pool is None:
            self._pool = multiprocessing.Pool(self._workers, _start_worker, (self.examples,))
        if self._ahead is None or self._ahead[0] != batch:
            self._ahead = batch, self._pool.map_async(_load, flat)
        loaded = self._ahead[1].get()
        following = [p for chunk in self.positions(batch + 1) for p in chunk]
        self._ahead = batch + 1, self._pool.map_async(_load, following)
        return loaded

    def __next__(self):
        epoch = self.epoch
        loaded = self._fetch(self.batches)
        self.batches += 1
        self.is_new_epoch = self.epoch > epoch
        size = self.mine[0][2]
        return [loaded[i:i + size] for i in range(0, len(loaded), size)]

    next = __next__

    def serialize(self, serializer):
        self.batches = int(serializer('batches', self.batches))
        self.is_new_epoch = bool(serializer('is_new_epoch', self.is_new_epoch))
        self._ahead = None

    def finalize(self):
        if self._pool is not None:
            # The workers ignore the stop signals that terminate() sends (they are the
            # rank's to act on, liveness): they end once the queue they hold is done.
            self._pool.close()
            self._pool.join()
            self._pool = None
            self._ahead = None
