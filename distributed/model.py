"""The zero-gamma ResNet classifier (Goyal et al. 2017, section 5.1)."""
import chainer
from chainercv.links import ResNet50, ResNet101, ResNet152
from chainercv.links.model.resnet import Bottleneck

ARCHS = {'resnet50': ResNet50, 'resnet101': ResNet101, 'resnet152': ResNet152}


def create_model(arch='resnet50', n_class=12, zero_gamma=True):
    """A ``chainer.links.Classifier`` over chainercv's ResNet (arch 'fb', picking 'fc6').

    With ``zero_gamma`` the last BatchNorm's gamma in every bottleneck starts at zero, so
    each residual block starts as the identity; this is what makes large-batch training
    with a linearly scaled lr stable.
    """
    if arch not in ARCHS:
        raise ValueError('unknown model.arch {!r}; choose one of {}'.format(arch, sorted(ARCHS)))
    extractor = ARCHS[arch](n_class=n_class, arch='fb')
    extractor.pick = 'fc6'
    model = chainer.links.Classifier(extractor)
    if zero_gamma:
        for link in model.links():
            if isinstance(link, Bottleneck):
                link.conv3.bn.gamma.array[:] = 0
    return model


def mean_of(model):
    """The per-channel mean the model's inputs are expected to have subtracted (3, 1, 1)."""
    return model.predictor.mean
