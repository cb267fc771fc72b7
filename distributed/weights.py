"""A classifier loaded from a file: a model.npz or a training checkpoint, whole or not at all.

A classifier's weights are used whole or refused: arrays the network does not ask for,
arrays it asks for and the file lacks, and arrays of another shape are all errors that
name the file and, where its keys tell, the network it holds. Files are read without
pickle (``safe_npz``).
"""
import json
import os

import numpy
from chainer.serializers import npz

from distributed import safe_npz
from distributed.checkpoint.files import from_text_array
from distributed.config import ConfigError
from distributed.model import ARCHS, create_model, res4_blocks

CHECKPOINT_MODEL = 'updater/model:main/'
"""Where a training checkpoint (snapshot_iter_<N>.npz) holds the classifier."""
RES4_BLOCKS = {res4_blocks(arch): arch for arch in ARCHS}
"""Bottleneck blocks in res4, the stage in which the ResNets differ, and the arch."""


class WeightsError(safe_npz.NpzError):
    """A weights file that does not fit the network; the message names it, says why and
    what to pass."""


def arch_of(keys):
    """``(arch or None, blocks)``: the ResNet whose classifier has the arrays ``keys``
    (``predictor/...``), told by the number of bottleneck blocks in res4."""
    blocks = {key.split('/')[2] for key in keys if key.startswith('predictor/res4/')
              and key.count('/') > 2}
    return RES4_BLOCKS.get(len(blocks)), len(blocks)


def model_arrays(arrays):
    """The classifier's arrays of a model.npz (``predictor/...``) or of a training
    checkpoint (under ``updater/model:main/``), keyed as a model.npz keys them."""
    if any(key.startswith(CHECKPOINT_MODEL) for key in arrays):
        return {key[len(CHECKPOINT_MODEL):]: value for key, value in arrays.items()
                if key.startswith(CHECKPOINT_MODEL)}
    return arrays


def load_weights(model, arrays, name, arch, trained_with=None):
    """Copy ``arrays`` (``model_arrays``'s dict) into ``model``, a classifier of ``arch``
    whose layers all have their shapes (``model.create_model``): every array of the model
    from the file, and every array of the file into the model, each of the model's shape.

    ``trained_with`` is the arch the file says it was trained with (a checkpoint says),
    or None. Raises ``WeightsError`` naming the file ``name``, what it holds and what
    to pass.
    """
    expected = npz.serialize(model)
    missing = sorted(set(expected) - set(arrays))
    unused = sorted(set(arrays) - set(expected))
    held, blocks = (trained_with, None) if trained_with else arch_of(arrays)
    if held and held != arch:
        told = (f'it was trained with model.arch={held}' if trained_with else
                f"its res4 has {blocks} bottleneck blocks, a {arch}'s has "
                f'{res4_blocks(arch)}')
        raise WeightsError(f'{name} holds the weights of a {held}, not of the model.arch={arch} '
                           f'this command builds ({told}); pass model.arch={held}')
    if missing or unused:
        raise WeightsError(
            '{} does not hold the weights of a model.arch={} classifier: {} of its {} '
            'arrays are missing{} and {} of the file\'s {} would be left unused{}; pass a '
            'model.npz or snapshot_iter_<N>.npz that launch.train wrote, and the model.arch '
            'it was trained with'.format(
                name, arch, len(missing), len(expected), _e_g(missing), len(unused),
                len(arrays), _e_g(unused)))
    wrong = [key for key in sorted(expected) if arrays[key].shape != expected[key].shape
             or not numpy.can_cast(arrays[key].dtype, expected[key].dtype, 'same_kind')]
    if wrong:
        key = wrong[0]
        raise WeightsError(
            '{} does not fit a model.arch={} classifier: {} is {} {} where the network has '
            '{} {} ({} array(s) differ); pass weights of this network (data.crop_size may '
            'differ, the 12 super-classes may not)'.format(
                name, arch, key, arrays[key].dtype, arrays[key].shape, expected[key].dtype,
                expected[key].shape, len(wrong)))
    npz.NpzDeserializer(arrays).load(model)


def _e_g(keys):
    return f" (e.g. {', '.join(keys[:3])})" if keys else ''


def weights_path(config):
    return config.model.path or os.path.join(config.out, 'model.npz')


def load_model(config):
    """The classifier of ``config.model`` with the weights of ``weights_path(config)``: a
    model.npz, or a training checkpoint (snapshot_iter_<N>.npz), whose model it takes.

    The file is read without pickle and used whole (``load_weights``); raises
    ``ConfigError`` naming the file, what it holds and what to pass.
    """
    path = weights_path(config)
    wanted = ('pass the model.npz that launch.train wrote, e.g. model=results/smoke/model.npz '
              '(make train makes one), or one of its snapshot_iter_<N>.npz')
    if os.path.isdir(path):
        inside = os.path.join(path, 'model.npz')
        if os.path.isfile(inside):
            wanted = ('pass the model.npz in it, model={}, or one of its '
                      'snapshot_iter_<N>.npz'.format(inside))
        raise ConfigError(f'model file {path} is a folder, not a weights file; {wanted}')
    if os.path.exists(path) and not os.path.isfile(path):
        raise ConfigError(f'model file {path} is not a regular file; {wanted}')
    if not os.path.isfile(path):
        raise ConfigError(f'model file {path} does not exist; {wanted}')
    model = create_model(config.model.arch, zero_gamma=config.model.zero_gamma)
    try:
        arrays = safe_npz.read_npz(safe_npz.read_bytes(path), 'model file ' + path)
        load_weights(model, model_arrays(arrays), 'model file ' + path, config.model.arch,
                     trained_with(arrays))
    except safe_npz.NpzError as e:
        raise ConfigError(str(e))
    return model


def trained_with(arrays):
    """The model.arch in the record of a checkpoint's ``arrays``, or None (a model.npz,
    or no readable record)."""
    try:
        return json.loads(from_text_array(arrays['meta/record']))['config']['model']['arch']
    except (KeyError, ValueError, TypeError):
        return None
