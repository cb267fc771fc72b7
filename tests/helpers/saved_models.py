"""Classifiers saved as launch.train saves them, for the tests of the commands that load one."""
import chainer

from distributed.model import create_model


def save_model(path, arch='resnet50'):
    """An untrained classifier as launch.train saves one (create_model sizes every layer)."""
    chainer.serializers.save_npz(str(path), create_model(arch))
    return str(path)
