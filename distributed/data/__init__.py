"""Data: ``data.root`` resolved to an SOP folder; its splits read on rank 0, shared across
ranks, transformed, iterated."""
import os
import socket

import chainer
import chainermn

from distributed.data import minisop, sop
from distributed.data.datasets import StreamExamples, decoded, gather_skipped
from distributed.data.stream import ChunkIterator
from distributed.data.transforms import TrainTransform, ValTransform


def create_datasets(config, runtime, chunks):
    """The run's train stream and this rank's shard of the test split, with their
    transforms; collective.

    The train dataset is a ``datasets.StreamExamples`` of the whole train split (every rank
    holds the list), indexed by stream position, for a run of ``chunks`` chunks per global
    batch. Examples are decoded by the transforms into uint8 images; files that do not
    decode are handled as ``data.on_bad_image`` says (``datasets.decoded``).
    """
    train, test = split_for_run(config, runtime, chunks)
    crop, scale = config.data.crop_size, config.data.scale_size
    return (decoded(StreamExamples(train, config.train.seed), TrainTransform(crop), config,
                    runtime.rank, images=len(train)),
            decoded(test, ValTransform(crop, scale), config, runtime.rank, substitute=False))


def split_for_run(config, runtime, chunks):
    """The whole train split (on every rank) and this rank's shard of the test split, as
    (path, label) lists; collective.

    The train split is broadcast whole: the stream decides which images each rank
    computes (``stream.ChunkIterator``). The test split is scattered in order, in shards
    whose lengths differ by at most one, each image once; an unreadable test image is None
    (not counted), never replaced by another.
    """
    def too_small(root, datasets):
        train, test = (len(d) for d in datasets)
        return (train_too_small(root, train, chunks, config.train.batch_size)
                or split_empty(root, 'test', test, 'evaluation during training'))

    train, test = read_on_root(config, runtime, ('train', 'test'), too_small)
    # Test shards of unequal length: equal ones would repeat images in the evaluation.
    return (runtime.comm.mpi_comm.bcast(train and list(train), root=0),
            chainermn.scatter_dataset(test, runtime.comm, force_equal_length=False))


def resolve_root(root):
    """The SOP folder the ``data.root`` setting ``root`` names: for 'minisop' the
    generated stand-in's (``minisop.ensure_minisop``: written on first use, then cached),
    else ``root`` with '~' expanded, made absolute. Nothing is checked (``sop.check_tree``).
    """
    if root == 'minisop':
        return minisop.ensure_minisop()
    return os.path.abspath(os.path.expanduser(root))


def read_on_root(config, runtime, splits, too_small=None):
    """The SOP ``splits`` of ``data.root`` on rank 0 (None on the other ranks); collective.

    Rank 0 checks the tree first, and then ``too_small(root, datasets)`` (an error message
    or None) whether the splits can serve the job; when either fails every rank raises
    the same ``DataError``, so no rank is left waiting. Examples are (file path, label)
    pairs.
    """
    root = resolve_root(config.data.root)  # on every rank: minisop is made where needed
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


def train_too_small(root, images, chunks, batch_size):
    """Why a train split of ``images`` cannot fill one global batch of ``chunks`` chunks
    of ``batch_size`` images (a message with the numbers and what to change), or None."""
    per_chunk = images // chunks
    if per_chunk >= batch_size:
        return None
    fixes = []
    if per_chunk >= 1:
        fixes.append(f'set train.batch_size to at most {per_chunk}')
    if images >= batch_size:
        fixes.append(f'run with at most {images // batch_size} chunk(s) (train.chunks, or '
                     f'ranks at the start)')
    fixes.append(f"add images to {os.path.join(root, sop.INDEX_FILES['train'])}")
    plural = '' if chunks == 1 else 's'
    return (f'the train split of {root} has {images} images: {per_chunk} per chunk with '
            f'{chunks} chunk{plural} (train.chunks), fewer than one batch '
            f"(train.batch_size={batch_size}); {', or '.join(fixes)}")


def split_empty(root, split, images, purpose):
    """Why a ``split`` of ``images`` images cannot serve ``purpose``, or None."""
    if images:
        return None
    return (f'the {split} split of {root} has no images, so {purpose} cannot run; list '
            f'images in {os.path.join(root, sop.INDEX_FILES[split])}')


def create_iterators(config, train, test, runtime, chunks):
    """This rank's training iterator over the run's stream (``stream.ChunkIterator``, a
    list of chunks per global batch) and its test iterator (one ordered pass)."""
    eval_batch = config.train.eval_batch_size or config.train.batch_size
    workers = config.data.workers if config.data.loader == 'multiprocess' else 0
    train_iter = ChunkIterator(train, train.images, config.train.batch_size, chunks,
                               runtime.size, runtime.rank, workers)
    if workers:
        test_iter = chainer.iterators.MultiprocessIterator(
            test, eval_batch, repeat=False, shuffle=False, n_processes=workers)
    else:
        test_iter = chainer.iterators.SerialIterator(test, eval_batch, repeat=False,
                                                     shuffle=False)
    return train_iter, test_iter


def unreadable_report(datasets, comm):
    """``(count, message)`` about the files skipped on all ranks; collective."""
    skipped = gather_skipped(datasets, comm)
    for dataset in datasets:
        dataset.close()
    if not skipped:
        return 0, ''
    listed = ', '.join(skipped[:10]) + (' ...' if len(skipped) > 10 else '')
    return len(skipped), f'skipped {len(skipped)} unreadable image(s): {listed}'
