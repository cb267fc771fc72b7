"""Data: SOP splits read on rank 0, shared across ranks, transformed, iterated."""
import os
import socket

import chainer
import chainermn
import numpy
from chainer.datasets import TransformDataset

from distributed.data import sop
from distributed.data.safe_images import SkipUnreadable, gather_skipped
from distributed.data.transforms import TrainTransform, ValTransform


def create_datasets(config, runtime):
    """This rank's shards of the train and test splits, with their transforms.

    Examples are (file path, label) pairs decoded by the transforms into uint8 images;
    files that do not decode are handled as ``data.on_bad_image`` says (see
    ``safe_images``).
    """
    train, test = scatter_splits(config, runtime)
    crop, scale = config.data.crop_size, config.data.scale_size
    return (decoded(train, TrainTransform(crop), config, runtime.rank),
            decoded(test, ValTransform(crop, scale), config, runtime.rank))


def decoded(pairs, transform, config, rank, substitute=True):
    """(file path, label) ``pairs`` as ``transform``'s uint8 images: any file that decodes
    is used, the others are handled as ``data.on_bad_image`` says (see ``safe_images``)."""
    return SkipUnreadable(TransformDataset(pairs, transform),
                          config.data.on_bad_image, rank, substitute)


def scatter_splits(config, runtime):
    """This rank's (path, label) shards of the train and test splits; collective.

    The train split is shuffled and scattered in disjoint shards of equal length, the test
    split in order.
    """
    def too_small(root, datasets):
        train, test = (len(d) for d in datasets)
        return (train_too_small(root, train, runtime.size, config.train.batch_size)
                or split_empty(root, 'test', test, 'evaluation during training'))

    train, test = read_on_root(config, runtime, ('train', 'test'), too_small)
    if runtime.is_root:
        train = equal_shards(train, runtime.size, config.train.seed)
    return (chainermn.scatter_dataset(train, runtime.comm),
            chainermn.scatter_dataset(test, runtime.comm))


def read_on_root(config, runtime, splits, too_small=None):
    """The SOP ``splits`` of ``data.root`` on rank 0 (None on the other ranks); collective.

    Rank 0 checks the tree first, and then ``too_small(root, datasets)`` (an error message
    or None) whether the splits can serve the job; when either fails every rank raises
    the same ``DataError``, so no rank is left waiting. Examples are (file path, label)
    pairs.
    """
    root = sop.resolve_root(config.data.root)  # on every rank: minisop is made where needed
    # Every host reads its own images: it must have rank 0's tree at the same path.
    seen = runtime.comm.mpi_comm.gather((socket.gethostname(), sop.index_digest(root)))
    datasets = [None] * len(splits)
    error = None
    if runtime.is_root:
        error = sop.check_tree(root) or sop.check_hosts(root, seen)
        if not error:
            datasets = [sop.load_split(root, split) for split in splits]
            error = too_small(root, datasets) if too_small else None
    error = runtime.comm.mpi_comm.bcast(error, root=0)
    if error:
        raise sop.DataError(error)
    return datasets


def train_too_small(root, images, ranks, batch_size):
    """Why a train split of ``images`` cannot give each of ``ranks`` ranks one batch of
    ``batch_size`` (a message with the numbers and what to change), or None."""
    per_rank = images // ranks
    if per_rank >= batch_size:
        return None
    fixes = []
    if per_rank >= 1:
        fixes.append('set train.batch_size to at most {}'.format(per_rank))
    if images >= batch_size:
        fixes.append('run on at most {} rank(s)'.format(images // batch_size))
    fixes.append('add images to {}'.format(os.path.join(root, sop.INDEX_FILES['train'])))
    return ('the train split of {} has {} images: {} per rank on {} rank{}, fewer than one '
            'batch (train.batch_size={}); {}'.format(
                root, images, per_rank, ranks, '' if ranks == 1 else 's', batch_size,
                ', or '.join(fixes)))


def split_empty(root, split, images, purpose):
    """Why a ``split`` of ``images`` images cannot serve ``purpose``, or None."""
    if images:
        return None
    return ('the {} split of {} has no images, so {} cannot run; list images in {}'.format(
        split, root, purpose, os.path.join(root, sop.INDEX_FILES[split])))


def equal_shards(dataset, size, seed):
    """``dataset`` shuffled and cut to a multiple of ``size``, so that scattering it gives
    disjoint shards of equal length: every rank then agrees where an epoch ends. At most
    size - 1 images are left out (chainermn would instead repeat some on two ranks)."""
    order = numpy.random.RandomState(seed).permutation(len(dataset))
    return chainer.datasets.SubDataset(dataset, 0, len(dataset) // size * size, order)


def create_iterators(config, train, test, rank):
    """Training iterator (shuffling, repeating) and test iterator (one ordered pass).

    The training order comes from a generator seeded with train.seed + rank, whose state
    checkpoints save, so a resumed run visits the same samples as an uninterrupted one.
    """
    batch = config.train.batch_size
    eval_batch = config.train.eval_batch_size or batch
    if config.data.loader == 'multiprocess':
        make = chainer.iterators.MultiprocessIterator
        options = dict(n_processes=config.data.workers)
    else:
        make = chainer.iterators.SerialIterator
        options = {}
    order = chainer.iterators.ShuffleOrderSampler(
        numpy.random.RandomState(config.train.seed + rank))
    return (make(train, batch, order_sampler=order, **options),
            make(test, eval_batch, repeat=False, shuffle=False, **options))


def unreadable_report(datasets, comm):
    """``(count, message)`` about the files skipped on all ranks; collective."""
    skipped = gather_skipped(datasets, comm)
    for dataset in datasets:
        dataset.close()
    if not skipped:
        return 0, ''
    return len(skipped), 'skipped {} unreadable image(s): {}{}'.format(
        len(skipped), ', '.join(skipped[:10]), ' ...' if len(skipped) > 10 else '')
