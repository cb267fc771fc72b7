"""The dataset wrappers of a run: what indexing its train and test datasets returns.

- ``StreamExamples``: the train stream's positions (``stream``) as ``(path, label, key)``
  examples, ``key`` the one an image's augmentation draws from.
- ``decoded``: (path, label) examples as the transforms' uint8 images (chainer's
  ``TransformDataset``), wrapped in ``SkipUnreadable``.
- ``SkipUnreadable``: a file that ``images`` cannot decode (``images.UnreadableImage``:
  truncated, empty, not an image, a format the product does not open) is never trained on
  and never crashes a loader worker: with ``data.on_bad_image: skip`` it is reported by
  name and the next readable example takes its place; with ``error`` the job stops with
  ``BadImageError`` naming the file.

Loader workers are separate processes, so each rank's skipped files are appended to a small
record file (local to the rank, outside ``out``) that the rank reads back for the final
report (``gather_skipped``).
"""
import os
import sys
import tempfile
import uuid

import chainer
from chainer.datasets import TransformDataset

from distributed.data.images import UnreadableImage
from distributed.data.stream import permutation


class StreamExamples(chainer.dataset.DatasetMixin):
    """The stream's positions as a dataset: example ``p`` is ``(path, label, draw)`` of
    the image at position ``p`` of the stream of ``pairs`` (``stream.permutation`` of
    ``seed``), ``draw = (seed, epoch, position in the epoch)`` the key its augmentation
    draws from (``transforms.draws``).

    Its length is ``sys.maxsize`` (the stream has no end); ``images`` is the number of
    distinct images. Picklable, so loader worker processes get it whole.
    """

    def __init__(self, pairs, seed):
        self.pairs = pairs
        self.seed = seed
        self.images = len(pairs)
        self._orders = {}

    def __len__(self):
        return sys.maxsize

    def get_example(self, p):
        epoch, position = divmod(int(p), self.images)
        order = self._orders.get(epoch)
        if order is None:
            # Two epochs at most are in use at once (a batch spanning their boundary).
            if len(self._orders) > 1:
                self._orders.pop(min(self._orders))
            order = self._orders[epoch] = permutation(self.seed, epoch, self.images)
        path, label = self.pairs[order[position]]
        return path, label, (self.seed, epoch, position)

    def __getstate__(self):
        return dict(self.__dict__, _orders={})


def decoded(pairs, transform, config, rank, substitute=True, images=None):
    """(file path, label) ``pairs`` as ``transform``'s uint8 images: any file that decodes
    is used, the others are handled as ``data.on_bad_image`` says (``SkipUnreadable``).
    ``images``: how many distinct images ``pairs`` holds (default: its length)."""
    return SkipUnreadable(TransformDataset(pairs, transform),
                          config.data.on_bad_image, rank, substitute, images)


class BadImageError(RuntimeError):
    """An unreadable image met with ``data.on_bad_image: error``."""

    exit_code = 3
    """Met by one rank (or its loader's thread) while the others wait in a collective, it
    ends the whole job with this code (``failures.abort``)."""


class SkipUnreadable(chainer.dataset.DatasetMixin):
    """Wraps a dataset whose examples may raise ``UnreadableImage``.

    ``images``: how many distinct images ``dataset`` holds (a ``StreamExamples`` is far
    longer). ``policy`` 'skip': report the file and return the next readable example
    instead (or, without ``substitute``, None: counting must not see an image twice);
    'error': raise ``BadImageError`` naming the file and the rank.
    """

    def __init__(self, dataset, policy, rank, substitute=True, images=None):
        self.dataset = dataset
        self.images = len(dataset) if images is None else images
        self.policy = policy
        self.rank = rank
        self.substitute = substitute
        # Created by the first skip, in whichever process meets it: a run without broken
        # files leaves no file behind.
        self.record = os.path.join(tempfile.gettempdir(),
                                   f'bad-images-rank{rank}-{uuid.uuid4().hex}.txt')

    def __len__(self):
        return len(self.dataset)

    def get_example(self, i):
        n = len(self.dataset)
        if not self.substitute:
            try:
                return self.dataset[i]
            except UnreadableImage as e:
                self._report(e)
                return None
        for step in range(self.images):
            try:
                return self.dataset[(i + step) % n]
            except UnreadableImage as e:
                self._report(e)
        raise BadImageError(f'rank {self.rank}: none of its {self.images} images can be '
                            f'decoded; check data.root')

    def _report(self, e):
        if self.policy == 'error':
            raise BadImageError(
                f'rank {self.rank}: image {e.path} cannot be decoded ({e.reason}). Replace or '
                f'delete the file and its index line, or set data.on_bad_image=skip to train '
                f'without it')
        print(f'warning: rank {self.rank}: skipping unreadable image {e.path} ({e.reason})',
              file=sys.stderr, flush=True)
        # One short O_APPEND write per file: safe from several loader workers at once.
        with open(self.record, 'a') as f:
            f.write(e.path + '\n')

    def skipped(self):
        """Distinct files this rank (and its loader workers) skipped so far."""
        try:
            with open(self.record) as f:
                return sorted(set(f.read().split('\n')) - {''})
        except OSError:
            return []

    def close(self):
        try:
            os.remove(self.record)
        except OSError:
            pass


def gather_skipped(datasets, comm):
    """Every rank's skipped files (``SkipUnreadable`` ``datasets``), gathered; the sorted
    distinct list on every rank; collective."""
    mine = sorted({p for d in datasets for p in d.skipped()})
    return sorted({p for paths in comm.mpi_comm.allgather(mine) for p in paths})
