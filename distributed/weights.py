"""Reading .npz files without running code, and loading weights whole or not at all.

chainer's ``load_npz`` opens files with ``allow_pickle=True``: an object array in a model
file is unpickled, and unpickling runs whatever code the file names. Here every file is
read with ``allow_pickle=False`` and every array is read whole (numpy reads an .npz
member lazily; reading it to its end is what checks its CRC), so a file is either
entirely read and checked or refused. chainer's ``NpzDeserializer`` then loads the arrays
from the dict, which it accepts in place of an open file.

A classifier's weights are used whole or refused: arrays the network does not ask for,
arrays it asks for and the file lacks, and arrays of another shape are all errors that
name the file and, where its keys tell, the network it holds.
"""
import io
import zipfile
import zlib

import numpy
from chainer.serializers import npz

from distributed.model import ARCHS, res4_blocks

CHECKPOINT_MODEL = 'updater/model:main/'
"""Where a training checkpoint (snapshot_iter_<N>.npz) holds the classifier."""
RES4_BLOCKS = {res4_blocks(arch): arch for arch in ARCHS}
"""Bottleneck blocks in res4, the stage in which the ResNets differ, and the arch."""
ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')  # a zip (.npz) with members, and an empty one


class WeightsError(ValueError):
    """A weights or checkpoint file that is not used; the message names it, says why and
    what to do."""


class Unreadable(WeightsError):
    """The file does not read back whole: missing, a folder, not readable, cut short or
    damaged (``resume=auto`` goes on to an older checkpoint)."""


def read_bytes(path):
    """The content of the file ``path`` (bytes); raises ``Unreadable``."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as e:
        raise Unreadable('{} cannot be read ({})'.format(path, e.strerror or e))


def read_npz(data, name):
    """Every array of the .npz archive ``data`` (bytes), read to its end and checked.

    Returns ``{key: numpy.ndarray}``. Raises ``Unreadable`` (naming ``name``) for a file
    that is not a whole .npz archive, and ``WeightsError`` for one that holds Python
    objects (an object array: only pickle reads those, and unpickling can run code).
    """
    if not data.startswith(ZIP_MAGIC):
        raise Unreadable('{} is not an .npz archive ({}); it may be cut short or damaged, '
                         'or another kind of file'.format(
                             name, 'empty' if not data else 'it does not start as a zip '
                             'archive does'))
    arrays = {}
    key = None
    try:
        with numpy.load(io.BytesIO(data), allow_pickle=False) as archive:
            for key in archive.files:
                arrays[key] = archive[key]
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        if isinstance(e, ValueError) and 'allow_pickle' in str(e):
            raise WeightsError(
                '{} holds {} as Python objects (a numpy object array), which only pickle '
                'can read, and unpickling a file can run any code: the file is not read. '
                'Use a file that launch.train wrote'.format(name, key))
        where = '{} does not read'.format(key) if key else 'its zip directory does not read'
        # One line: a parser's message may span several.
        raise Unreadable('{} is cut short or damaged: {} ({}: {})'.format(
            name, where, type(e).__name__, ' '.join(str(e).split())))
    # numpy hands back the bytes of a member that is not an .npy array.
    odd = [key for key, value in arrays.items() if not isinstance(value, numpy.ndarray)]
    if odd:
        raise Unreadable('{} is damaged: {} is not a numpy array (not an .npz file that '
                         'numpy or chainer wrote)'.format(name, odd[0]))
    return arrays


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
    return ' (e.g. {})'.format(', '.join(keys[:3])) if keys else ''
