"""The checkpoint file: its name, its layout, writing it and reading it back.

One file per checkpoint, ``snapshot_iter_<N>.npz`` in ``out``: a regular chainer trainer
snapshot (model; optimizer with its momentum and, under mixed16, its float32 master weights
and loss scale, which chainer's own serializers drop (``optim.MomentumSGD``); updater
iteration; extension states such as LogReport's log and the triggers) plus:

- ``meta/record``: what the checkpoint means, as JSON text: the checkpoint ``FORMAT``, the
  resolved config, the rank count and a fingerprint of the train split
  (``resume.describe_run``).
- ``meta/none``: the keys whose value is None (JSON). chainer's writer would store each as
  an object array, which only pickle reads.

Nothing per rank is stored: the iterator's state is the run's global position, and what
differs between ranks is made equal before the write (``extension.collect``). Nothing in
the file is pickled, and it is read with ``allow_pickle=False`` (``safe_npz.read_npz``): no
checkpoint can run code.
"""
import io
import json
import os
import re
import zipfile

import numpy
from chainer.serializers import npz

from distributed import safe_npz
from distributed.failures import naming


FILENAME = 'snapshot_iter_{.updater.iteration}.npz'


PATTERN = re.compile(r'^snapshot_iter_(\d+)\.npz$')


FORMAT = 3
"""The checkpoint layout (1: rank states pickled, before ``meta/record``; 2: per-rank
iterator, random and BatchNorm states, resumable on the same rank count only, and no float32
master weights or loss scale under mixed16)."""


class CheckpointError(ValueError):
    """A checkpoint asked for cannot be used; the message names it and what to do."""


def list_checkpoints(out):
    """``[(iteration, file name)]`` of the complete checkpoints in ``out``, in order.

    Only renamed, finished files match the pattern; chainer's temporary folders
    (``tmpsnapshot_iter_...``) never do."""
    try:
        names = os.listdir(out)
    except OSError:
        return []
    return sorted((int(m.group(1)), name) for name in names for m in [PATTERN.match(name)]
                  if m)


def find_latest(out):
    """Path of the newest complete checkpoint in ``out`` (highest iteration), or None."""
    found = list_checkpoints(out)
    return os.path.join(out, found[-1][1]) if found else None


class JobState:
    """The trainer and the run's record, as one serializable target."""

    def __init__(self, trainer, record):
        self.trainer = trainer
        self.record = record

    def serialize(self, serializer):
        self.trainer.serialize(serializer)
        serializer['meta']('record', as_text_array(json.dumps(self.record)))


def as_text_array(text):
    return numpy.frombuffer(text.encode('utf-8'), numpy.uint8)


def from_text_array(array):
    return array.tobytes().decode('utf-8')


def save(path, arrays):
    """chainer's ``save_npz`` of ``arrays`` (a snapshot's ``{key: value}``, as chainer's
    ``DictionarySerializer`` makes it), uncompressed and without object arrays.

    That serializer stores a None value as ``numpy.asarray(None)``, an object array, which
    only pickle reads back; those keys are listed in ``meta/none`` instead. Any other
    object array is a bug here: raises ``TypeError``.
    """
    nones = sorted(key for key, value in arrays.items() if _is_none(value))
    arrays = {key: value for key, value in arrays.items() if key not in nones}
    objects = [key for key, value in arrays.items() if numpy.asarray(value).dtype.hasobject]
    if objects:
        raise TypeError(f'a checkpoint would hold Python objects at {objects}')
    arrays['meta/none'] = as_text_array(json.dumps(nones))
    # Uncompressed: zlib on ~200 MB of float32 weights costs seconds and saves little.
    save_npz(path, arrays, compression=False)


def save_npz(path, target, compression=True):
    """chainer's ``save_npz``; an ``OSError`` it raises names ``path``
    (``failures.naming``)."""
    with naming(path):
        npz.save_npz(path, target, compression=compression)


def _is_none(value):
    return value is None or (isinstance(value, numpy.ndarray) and value.dtype.hasobject
                             and value.shape == () and value[()] is None)


def read_checkpoint(data, path):
    """``(arrays, record)`` of the checkpoint ``data`` (bytes of the file ``path``): every
    array read and checked, None values restored (as chainer's reader expects them), and
    the record of the run that wrote it.

    Raises ``safe_npz.Unreadable`` for a file that does not read back whole, and
    ``CheckpointError`` for one that this version does not read.
    """
    if _pickled_rank_states(data):
        raise CheckpointError(
            'checkpoint {} was written by an earlier version of launch.train, which stored '
            'the ranks\' states with pickle; unpickling a file can run any code, so it is '
            'not read. Start afresh (in another out folder, or move it away), or finish '
            'that run with the version that wrote it'.format(path))
    try:
        arrays = safe_npz.read_npz(data, path)
    except safe_npz.Unreadable:
        raise
    except safe_npz.NpzError as e:
        raise CheckpointError(str(e))
    try:
        record = json.loads(from_text_array(arrays.pop('meta/record')))
        nones = json.loads(from_text_array(arrays.pop('meta/none')))
        earlier = isinstance(record, dict) and record.get('format') == 2
        well_formed = (isinstance(record, dict) and record.get('format') == FORMAT
                       and isinstance(record.get('config'), dict)
                       and isinstance(record.get('ranks'), int)
                       and isinstance(record.get('data'), dict)
                       and all(isinstance(key, str) for key in nones))
    except (KeyError, ValueError, TypeError):
        earlier = well_formed = False
    if earlier:
        raise CheckpointError(
            'checkpoint {} was written by an earlier version of launch.train (format 2: '
            'per-rank iterator and random states, one rank count only), which this one '
            'does not read; start afresh (in another out folder, or move it away), or '
            'finish that run with the version that wrote it'.format(path))
    if not well_formed:
        raise CheckpointError('{} holds no record of the run that wrote it: it is not a '
                              'checkpoint written by launch.train; give another with '
                              'resume=PATH'.format(path))
    for key in nones:
        arrays[key] = numpy.asarray(None)
    return arrays, record


def _pickled_rank_states(data):
    """Whether ``data`` is a checkpoint of the first layout (``ranks/<r>/state``, a
    pickle); only the zip directory is read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(re.match(r'^ranks/\d+/state\.npy$', name)
                       for name in archive.namelist())
    except (zipfile.BadZipFile, EOFError, OSError):
        return False


def read_record(path):
    """The record (``meta/record``, a dict) of the checkpoint file ``path``, reading that
    member alone, or None where the file has none that reads. ``read_checkpoint`` reads
    and checks the whole file."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open('meta/record.npy') as f:
            record = json.loads(from_text_array(numpy.load(f, allow_pickle=False)))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return None
    return record if isinstance(record, dict) else None
