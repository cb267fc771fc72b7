"""The zero-gamma ResNet classifier (Goyal et al. 2017, section 5.1)."""
import random
import typing

import chainer
import numpy
from chainercv.links.model.resnet import Bottleneck, ResNet

from distributed.config import Arch

ARCHS = typing.get_args(Arch)
"""The networks ``create_model`` builds: ``config.Arch``'s, 'resnet<depth>'."""


def depth(arch):
    """The layer count of the ResNet ``arch`` ('resnet101' -> 101)."""
    return int(arch[len('resnet'):])


def res4_blocks(arch):
    """The bottleneck blocks in res4 of the ResNet ``arch``, the stage in which the ResNets
    differ (6, 23, 36), as chainercv builds it."""
    return ResNet._blocks[depth(arch)][2]


def create_model(arch='resnet50', n_class=12, zero_gamma=True):
    """A ``chainer.links.Classifier`` over chainercv's ResNet (arch 'fb', picking 'fc6').

    With ``zero_gamma`` the last BatchNorm's gamma in every bottleneck starts at zero, so
    each residual block starts as the identity; this is what makes large-batch training
    with a linearly scaled lr stable.

    Every parameter exists on return: chainercv sizes some layers (conv1, fc6, each
    stage's first block) at the first forward pass, so one small batch goes through in
    test mode here (BatchNorm statistics untouched). The weights broadcast before the first
    update, the optimizer's state and the weights files then all see the whole network;
    drawn here, the initial weights come from the generator's state at creation.
    """
    if arch not in ARCHS:
        raise ValueError(f'unknown model.arch {arch!r}; choose one of {sorted(ARCHS)}')
    extractor = ResNet(depth(arch), n_class=n_class, arch='fb')
    extractor.pick = 'fc6'
    model = chainer.links.Classifier(extractor)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        extractor(numpy.zeros((1, 3, 32, 32), chainer.get_dtype()))
    if zero_gamma:
        for link in model.links():
            if isinstance(link, Bottleneck):
                link.conv3.bn.gamma.array[:] = 0
    return model


def mean_of(model):
    """The per-channel mean the model's inputs are expected to have subtracted (3, 1, 1)."""
    return model.predictor.mean


def batchnorm_statistics(model):
    """The running statistics (``avg_mean``, ``avg_var``: arrays of shape (C,), float32) of
    every ``chainer.links.BatchNormalization`` link of ``model``, in a fixed order (sorted
    link names), the same on every rank. The arrays themselves, not copies."""
    return [getattr(link, name) for _, link in sorted(model.namedlinks())
            if isinstance(link, chainer.links.BatchNormalization)
            for name in ('avg_mean', 'avg_var')]


def seed_random_state(seed):
    """Seed Python's and NumPy's global generators: the initial weights draw from them
    (rank 0's are broadcast). Augmentations draw from keys of their own
    (``transforms.draws``), so no generator state is part of a checkpoint."""
    random.seed(seed)
    numpy.random.seed(seed)
