"""Images that may be broken: decode whatever decodes, name and skip (or stop on) the rest.

A real photo folder holds grayscale, CMYK and palette JPEGs, PNG bytes behind a .JPG name,
images with an alpha channel and thumbnails smaller than the crop; all of these are used, as
RGB. A file that cannot be decoded at all (truncated, empty, not an image) is never trained
on and never crashes a loader worker: with ``on_bad_image: skip`` it is reported by name and
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
import numpy
from chainercv import transforms, utils
from PIL import Image

# random_sized_crop keeps as little as 8% of the area; below this side a crop can be empty.
MIN_SIDE = 16


class UnreadableImage(Exception):
    """A listed image file that cannot be decoded."""

    def __init__(self, path, reason):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


class BadImageError(RuntimeError):
    """An unreadable image met with ``data.on_bad_image: error``."""

    exit_code = 3
    """Met by one rank (or its loader's thread) while the others wait in a collective, it
    ends the whole job with this code (``runtime.abort``)."""


def read_rgb(path):
    """The image at ``path`` as a float32 CHW RGB array, whatever its mode or format."""
    try:
        return utils.read_image(path, color=True)
    except Exception:
        # chainercv refuses an alpha channel unless told what to do with it, and PIL can
        # read some modes only through an explicit conversion: try that before giving up.
        pass
    try:
        with Image.open(path) as image:
            rgb = numpy.asarray(image.convert('RGB'), dtype=numpy.float32)
    except Exception as e:
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror  # 'No such file or directory': the path is named already
        else:
            reason = '{}: {}'.format(type(e).__name__, e) if str(e) else type(e).__name__
        raise UnreadableImage(path, reason)
    return rgb.transpose(2, 0, 1).copy()


class Tolerant:
    """A transform of ``(file path, label)`` that copes with any image that decodes.

    The fast path (``fastimage``, used by the transforms for paths) handles ordinary files;
    when it refuses one (an odd mode, a thumbnail too small to crop), the file is decoded
    in full as RGB, enlarged if tiny, and given to the same transform as an array. A file
    that cannot be decoded at all raises ``UnreadableImage`` naming it."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, in_data):
        path, label = in_data
        try:
            return self.transform(in_data)
        except Exception:
            pass
        img = read_rgb(path)
        if min(img.shape[1:]) < MIN_SIDE:
            img = transforms.scale(img, MIN_SIDE, fit_short=True)
        return self.transform((img, label))


class SkipUnreadable(chainer.dataset.DatasetMixin):
    """Wraps a dataset whose examples may raise ``UnreadableImage``.

    ``policy`` 'skip': report the file and return the next readable example instead (or,
    without ``substitute``, None: counting must not see an image twice); 'error': raise
    ``BadImageError`` naming the file and the rank.
    """

    def __init__(self, dataset, policy, rank, substitute=True):
        self.dataset = dataset
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
        for step in range(n):
            try:
                return self.dataset[(i + step) % n]
            except UnreadableImage as e:
                self._report(e)
        raise BadImageError('rank {}: none of its {} images can be decoded; check data.root'
                            .format(self.rank, n))

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
