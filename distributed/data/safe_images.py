"""Images that may be broken: name and skip (or stop on) those that do not decode.

Every file is read by ``images`` (the product's one reader), which uses whatever a viewer
shows; a file that cannot be decoded at all (truncated, empty, not an image, a format the
product does not open) raises ``images.UnreadableImage``. Such a file is never trained on
and never crashes a loader worker: with ``on_bad_image: skip`` it is reported by name and
the next readable sample takes its place; with ``error`` the job stops naming the file.

Loader workers are separate processes, so each rank's skipped files are appended to a small
record file (local to the rank, outside ``out``) that the rank reads back for the final
report.
"""
import os
import sys
import tempfile
import uuid

import chainer

from distributed.data.images import UnreadableImage


class BadImageError(RuntimeError):
    """An unreadable image met with ``data.on_bad_image: error``."""

    exit_code = 3
    """Met by one rank (or its loader's thread) while the others wait in a collective, it
    ends the whole job with this code (``runtime.abort``)."""


class SkipUnreadable(chainer.dataset.DatasetMixin):
    """Wraps a dataset whose examples may raise ``UnreadableImage``.

    ``images``: how many distinct images ``dataset`` holds (a ``stream.StreamExamples``
    is far longer). ``policy`` 'skip': report the file and return the next readable
    example instead (or,
    without ``substitute``, None: counting must not see an image twice); 'error': raise
    ``BadImageError`` naming the file and the rank.
    """

    def __init__(self, dataset, policy, rank, substitute=True, images=None):
        self.dataset = dataset
        self.images = len(dataset) if images is None else images
        self.policy = policy
        self.rank = rank
        self.substitute = substitute
        # Created by the first skip, in whichever process meets it: a run without broken
        # files leaves no file behind.
        self.record = os.path.join(tempfile.gettempdir(), 'bad-images-rank{}-{}.txt'.format(
            rank, uuid.uuid4().hex))

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
        raise BadImageError('rank {}: none of its {} images can be decoded; check data.root'
                            .format(self.rank, self.images))

    def _report(self, e):
        if self.policy == 'error':
            raise BadImageError(
                'rank {}: image {} cannot be decoded ({}). Replace or delete the file and its '
                'index line, or set data.on_bad_image=skip to train without it'.format(
                    self.rank, e.path, e.reason))
        print('warning: rank {}: skipping unreadable image {} ({})'.format(
            self.rank, e.path, e.reason), file=sys.stderr, flush=True)
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
    """Every rank's skipped files, gathered; the sorted distinct list on every rank."""
    mine = sorted({p for d in datasets for p in d.skipped()})
    return sorted({p for paths in comm.mpi_comm.allgather(mine) for p in paths})
