"""Broken and crafted files, for the tests of what the product does with the files it reads:
copies cut short or damaged as interrupted writes and copies leave them, and .npz files
that would run code if they were unpickled."""
import io
import os
import pickle
import struct
import zipfile

import numpy


class MakesAFile:
    """Unpickling this object creates the file ``path``: what a crafted file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


def object_array(marker):
    """An object array whose unpickling creates the file ``marker``."""
    array = numpy.empty(1, object)
    array[0] = MakesAFile(marker)
    return array


def arrays_of(path):
    """Every array of the (harmless) .npz at ``path``."""
    with numpy.load(str(path), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def rewrite(path, arrays):
    """Write ``arrays`` as the .npz ``path`` (object arrays pickled, as numpy.savez does)."""
    with open(str(path), 'wb') as f:
        numpy.savez(f, **arrays)


DAMAGES = ('truncated', 'empty', 'zeros', 'crc', 'folder', 'not_an_array')
"""The ways a checkpoint or model file is found damaged (``damage``)."""


def weights_that_do_not_fit(kind, model_file, path, marker):
    """Write a copy of the classifier weights ``model_file`` that does not fit a resnet50
    to ``path``: ``kind`` 'object_array' (its first convolution an object array whose
    unpickling creates ``marker``) or 'lazy_shape' (a first convolution for 4 channels).
    Returns the words the refusal must contain."""
    arrays = arrays_of(model_file)
    arrays['predictor/conv1/conv/W'] = (
        object_array(marker) if kind == 'object_array'
        else numpy.ones((64, 4, 7, 7), numpy.float32))
    rewrite(path, arrays)
    return ('as Python objects' if kind == 'object_array'
            else 'is float32 (64, 4, 7, 7) where the network has float32 (64, 3, 7, 7)')


def damage(source, target, how):
    """Write ``target`` as the .npz ``source`` damaged ``how`` (one of ``DAMAGES``):
    cut to half its size (an interrupted copy), empty, zero bytes of the same size, one
    byte of its largest array flipped (its zip directory intact, its CRC wrong), a folder
    of that name, or a zip member that is not an array."""
    data = open(str(source), 'rb').read()
    if how == 'folder':
        os.mkdir(str(target))
        return
    if how == 'truncated':
        data = data[:len(data) // 2]
    elif how == 'empty':
        data = b''
    elif how == 'zeros':
        data = bytes(len(data))
    elif how == 'crc':
        data = bytearray(data)
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
            member = max(archive.infolist(), key=lambda info: info.compress_size)
        # The local header: 30 bytes, then the name and the extra field, then the data.
        name_length, extra_length = struct.unpack(
            '<HH', data[member.header_offset + 26:member.header_offset + 30])
        start = member.header_offset + 30 + name_length + extra_length
        data[start + member.compress_size // 2] ^= 0xFF
        data = bytes(data)
    elif how == 'not_an_array':
        buffer = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as archive, \
                zipfile.ZipFile(buffer, 'w') as out:
            for info in archive.infolist():
                out.writestr(info, archive.read(info))
            out.writestr('notes.npy', b'plain text, not an array')
        data = buffer.getvalue()
    else:
        raise ValueError(how)
    with open(str(target), 'wb') as f:
        f.write(data)


def pickled_rank_states(source, target, marker, ranks=2):
    """``target``: the checkpoint ``source`` with each rank's state stored as the first
    checkpoint layout stored it (``ranks/<r>/state``, a pickle), a pickle that creates the
    file ``marker`` when it is loaded."""
    arrays = arrays_of(source)
    blob = numpy.frombuffer(pickle.dumps(MakesAFile(marker)), numpy.uint8)
    for r in range(ranks):
        arrays['ranks/{}/state'.format(r)] = blob
    rewrite(target, arrays)
