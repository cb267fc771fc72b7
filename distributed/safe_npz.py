"""Reading .npz files without running code.

chainer's ``load_npz`` opens files with ``allow_pickle=True``: an object array in a model
file is unpickled, and unpickling runs whatever code the file names. Here every file is
read with ``allow_pickle=False`` and every array is read whole (numpy reads an .npz
member lazily; reading it to its end is what checks its CRC), so a file is either
entirely read and checked or refused. chainer's ``NpzDeserializer`` then loads the arrays
from the dict, which it accepts in place of an open file.
"""
import io
import zipfile
import zlib

import numpy


ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')  # a zip (.npz) with members, and an empty one


class NpzError(ValueError):
    """An .npz file (weights or a checkpoint) that is not used; the message names it, says
    why and what to do."""


class Unreadable(NpzError):
    """The file does not read back whole: missing, a folder, not readable, cut short or
    damaged (``resume=auto`` goes on to an older checkpoint)."""


def read_bytes(path):
    """The content of the file ``path`` (bytes); raises ``Unreadable``."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as e:
        raise Unreadable(f'{path} cannot be read ({e.strerror or e})')


def read_npz(data, name):
    """Every array of the .npz archive ``data`` (bytes), read to its end and checked.

    Returns ``{key: numpy.ndarray}``. Raises ``Unreadable`` (naming ``name``) for a file
    that is not a whole .npz archive, and ``NpzError`` for one that holds Python
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
            raise NpzError(
                '{} holds {} as Python objects (a numpy object array), which only pickle '
                'can read, and unpickling a file can run any code: the file is not read. '
                'Use a file that launch.train wrote'.format(name, key))
        where = f'{key} does not read' if key else 'its zip directory does not read'
        # One line: a parser's message may span several.
        raise Unreadable('{} is cut short or damaged: {} ({}: {})'.format(
            name, where, type(e).__name__, ' '.join(str(e).split())))
    # numpy hands back the bytes of a member that is not an .npy array.
    odd = [key for key, value in arrays.items() if not isinstance(value, numpy.ndarray)]
    if odd:
        raise Unreadable('{} is damaged: {} is not a numpy array (not an .npz file that '
                         'numpy or chainer wrote)'.format(name, odd[0]))
    return arrays
