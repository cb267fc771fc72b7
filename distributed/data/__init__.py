"""Data: SOP splits read on rank 0, scattered across ranks, transformed, iterated."""
import chainer
import chainermn
import numpy
from chainer.datasets import TransformDataset

from distributed.data import sop
from distributed.data.transforms import TrainTransform, ValTransform


def create_datasets(config, runtime, mean):
    """This rank's shards of the train and test splits, with their transforms.

    Rank 0 reads the index files and checks the tree; the train split is shuffled and
    scattered in disjoint shards of equal length, the test split in order.
    """
    root = sop.resolve_root(config.data.root)
    train = test = None
    if runtime.is_root:
        error = sop.check_tree(root)
        if not error:
            train, test = sop.load_split(root, 'train'), sop.load_split(root, 'test')
    else:
        error = None
    error = runtime.comm.mpi_comm.bcast(error, root=0)
    if error:
        raise sop.DataError(error)
    if runtime.is_root:
        train = equal_shards(train, runtime.size, config.train.seed)
    train = chainermn.scatter_dataset(train, runtime.comm)
    test = chainermn.scatter_dataset(test, runtime.comm)
    crop, scale = config.data.crop_size, config.data.scale_size
    return (TransformDataset(train, TrainTransform(mean, crop)),
            TransformDataset(test, ValTransform(mean, crop, scale)))


def equal_shards(dataset, size, seed):
    """``dataset`` shuffled and cut to a multiple of ``size``, so that scattering it gives
    disjoint shards of equal length: every rank then agrees where an epoch ends. At most
    size - 1 images are left out (chainermn would instead repeat some on two ranks)."""
    order = numpy.random.RandomState(seed).permutation(len(dataset))
    return chainer.datasets.SubDataset(dataset, 0, len(dataset) // size * size, order)


def create_iterators(config, train, test):
    """Training iterator (shuffling, repeating) and test iterator (one ordered pass)."""
    batch = config.train.batch_size
    eval_batch = config.train.eval_batch_size or batch
    if config.data.loader == 'multiprocess':
        make = chainer.iterators.MultiprocessIterator
        options = dict(n_processes=config.data.workers)
    else:
        make = chainer.iterators.SerialIterator
        options = {}
    return (make(train, batch, **options),
            make(test, eval_batch, repeat=False, shuffle=False, **options))
