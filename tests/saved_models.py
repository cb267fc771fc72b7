"""Classifiers saved as launch.train saves them, for the tests of the commands that load one."""
import chainer
import numpy

from distributed.model import create_model


def save_model(path, initialise=True, arch='resnet50'):
    """An untrained classifier as launch.train saves one; a forward pass sizes lazy layers."""
    model = create_model(arch)
    if initialise:
        with chainer.using_config('train', False):
            model.predictor(numpy.zeros((1, 3, 32, 32), numpy.float32))
    chainer.serializers.save_npz(str(path), model)
    return str(path)
