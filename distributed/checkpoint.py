"""Checkpoints that survive pre-emption: consistent across ranks, atomic, resumable exactly.

One file per checkpoint, ``snapshot_iter_<N>.npz`` in ``out``, written by rank 0 only with
chainer's ``extensions.snapshot`` (it writes into a temporary folder inside ``out`` and
renames, so a crash mid-write leaves the previous checkpoints intact; ``n_retains`` keeps the
newest ``checkpoint.keep``). The file is a regular trainer snapshot (model; optimizer with its
momentum and, under mixed16, its float32 master weights and loss scale, which chainer's own
serializers drop (``optim.MomentumSGD``); updater iteration; extension states such as
LogReport's log and the triggers) plus:

- nothing per rank: the training iterator's state is the run's global position (global
  batches done, the same on every rank: ``stream.ChunkIterator``), augmentations draw from
  the seed, the epoch and the position, and what did differ between ranks is made equal
  by a collective step just before the write (``collect``): the BatchNorm running
  statistics are averaged over the ranks, the sums of the numbers to log since the last
  log line are added up. So a checkpoint resumes on any rank count that divides the
  run's ``train.chunks``. On resume rank 0 reads the file and broadcasts it, so ranks
  need no shared filesystem.
- ``meta/record``: what the checkpoint means, as JSON text: the resolved config, the rank
  count and a fingerprint of the train split (``describe_run``). A resume compares it with
  its own run and refuses the changes in ``REFUSED``.
- ``meta/none``: the keys whose value is None (JSON). chainer's writer would store each as
  an object array, which only pickle reads.

Nothing in the file is pickled, and it is read with ``allow_pickle=False`` (``weights``):
no checkpoint can run code. The lr schedule is a pure function of the updater's
iteration, so it resumes with it.
"""
import hashlib
import io
import json
import os
import random
import re
import shutil
import zipfile

import chainer
import numpy
from chainer.serializers import npz
from chainer.training import extensions

from distributed import weights
from distributed.config import to_dict
from distributed.data import sop
from distributed.model import batchnorm_statistics
from distributed.runtime import naming

FILENAME = 'snapshot_iter_{.updater.iteration}.npz'
PATTERN = re.compile(r'^snapshot_iter_(\d+)\.npz$')
FORMAT = 3
"""The checkpoint layout (1: rank states pickled, before ``meta/record``; 2: per-rank
iterator, random and BatchNorm states, resumable on the same rank count only, and no float32
master weights or loss scale under mixed16)."""
REFUSED = {
    'model.arch': 'the network: the weights and the momentum are its layers',
    'train.batch_size': 'the stream position, the iterations per epoch and with them '
                        'the lr schedule are counted in batches of it',
    'train.chunks': 'the global batch, the lr scaling and the BatchNorm groups are made '
                    'of that many chunks',
    'train.seed': 'it decides the order of the images and their augmentations',
    'train.dtype': 'float32 and mixed16 keep different optimizer state (float32 master '
                   'weights, a loss scale)',
}
"""Config keys whose change alters what a checkpoint means, and why; a resume with another
value is refused. A rank count that does not divide ``train.chunks`` and the train split's
content are refused too; any other key may change on resume (more epochs, another lr or
schedule, intervals, data.root moved with the same content, loader, communicator, device,
the rank count, ...) and is printed."""


class CheckpointError(ValueError):
    """A checkpoint asked for cannot be used; the message names it and what to do."""


def seed_random_state(seed):
    """Seed Python's and NumPy's global generators: the initial weights draw from them
    (rank 0's are broadcast). Augmentations draw from keys of their own
    (``transforms.draws``), so no generator state is part of a checkpoint."""
    random.seed(seed)
    numpy.random.seed(seed)


def _checkpoints(out):
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
    found = _checkpoints(out)
    return os.path.join(out, found[-1][1]) if found else None


def collect(trainer, comm):
    """Make what differs between ranks equal on every rank before a checkpoint;
    collective. The BatchNorm running statistics become their mean over the ranks (what
    evaluation and ``model.npz`` use; by linearity of their updates the mean of a later
    step is the same as without this), and the extensions that keep a rank's share of a
    sum (``COLLECTED_EXTENSIONS``) combine it, so that rank 0's state is the run's."""
    mean_batchnorm_statistics(trainer.updater.get_optimizer('main').target, comm)
    for name in COLLECTED_EXTENSIONS:
        try:
            extension = trainer.get_extension(name)
        except ValueError:
            continue
        extension.combine()


COLLECTED_EXTENSIONS = ('mean_across_ranks',)
"""Extensions with a ``combine()`` (collective) that makes their state the same on every
rank (``trainer.MeanAcrossRanks``)."""


def mean_batchnorm_statistics(model, comm):
    """Replace every BatchNorm running statistic (``avg_mean``, ``avg_var``) of ``model`` by
    its mean over the ranks of ``comm``, with one float64 allreduce through the host;
    collective.

    ChainerMN's ``extensions.AllreducePersistent`` does the same with one MPI allreduce per
    array, each on the array where it lives: on a GPU that hands MPI a device pointer,
    which only a CUDA-aware MPI can read (README: `flat` needs one too).
    """
    from mpi4py import MPI
    arrays = batchnorm_statistics(model)
    if comm.size == 1 or not arrays:
        return
    cpu = chainer.backend.CpuDevice()
    total = numpy.concatenate([cpu.send(a).ravel().astype(numpy.float64) for a in arrays])
    comm.mpi_comm.Allreduce(MPI.IN_PLACE, total)
    total /= comm.size
    start = 0
    for array in arrays:
        mean = total[start:start + array.size].reshape(array.shape).astype(array.dtype)
        array[...] = chainer.backend.get_device_from_array(array).send(mean)
        start += array.size


class _JobState:
    """The trainer and the run's record, as one serializable target."""

    def __init__(self, trainer, record):
        self.trainer = trainer
        self.record = record

    def serialize(self, serializer):
        self.trainer.serialize(serializer)
        serializer['meta']('record', _text(json.dumps(self.record)))


def _text(text):
    return numpy.frombuffer(text.encode('utf-8'), numpy.uint8)


def _untext(array):
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
        raise TypeError('a checkpoint would hold Python objects at {}'.format(objects))
    arrays['meta/none'] = _text(json.dumps(nones))
    # Uncompressed: zlib on ~200 MB of float32 weights costs seconds and saves little.
    save_npz(path, arrays, compression=False)


def save_npz(path, target, compression=True):
    """chainer's ``save_npz``; an ``OSError`` it raises names ``path``
    (``runtime.naming``)."""
    with naming(path):
        npz.save_npz(path, target, compression=compression)


def _is_none(value):
    return value is None or (isinstance(value, numpy.ndarray) and value.dtype.hasobject
                             and value.shape == () and value[()] is None)


def read_checkpoint(data, path):
    """``(arrays, record)`` of the checkpoint ``data`` (bytes of the file ``path``): every
    array read and checked, None values restored (as chainer's reader expects them), and
    the record of the run that wrote it.

    Raises ``weights.Unreadable`` for a file that does not read back whole, and
    ``CheckpointError`` for one that this version does not read.
    """
    if _pickled_rank_states(data):
        raise CheckpointError(
            'checkpoint {} was written by an earlier version of launch.train, which stored '
            'the ranks\' states with pickle; unpickling a file can run any code, so it is '
            'not read. Start afresh (in another out folder, or move it away), or finish '
            'that run with the version that wrote it'.format(path))
    try:
        arrays = weights.read_npz(data, path)
    except weights.Unreadable:
        raise
    except weights.WeightsError as e:
        raise CheckpointError(str(e))
    try:
        record = json.loads(_untext(arrays.pop('meta/record')))
        nones = json.loads(_untext(arrays.pop('meta/none')))
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


def trained_with(arrays):
    """The model.arch in the record of a checkpoint's ``arrays``, or None (a model.npz,
    or no readable record)."""
    try:
        return json.loads(_untext(arrays['meta/record']))['config']['model']['arch']
    except (KeyError, ValueError, TypeError):
        return None


def describe_run(config, runtime):
    """What the checkpoints of this run mean, on rank 0 (None on the other ranks, which
    neither write nor compare): the resolved config, the rank count and the train split's
    fingerprint (``train_fingerprint``)."""
    if not runtime.is_root:
        return None
    return {'format': FORMAT, 'config': to_dict(config), 'ranks': runtime.size,
            'data': train_fingerprint(sop.resolve_root(config.data.root))}


def train_fingerprint(root):
    """``{'train_images': n, 'train_sha256': hex}``: the train split of the SOP tree
    ``root`` as its list of (path relative to ``root``, super-class); the same data moved
    to another folder gives the same fingerprint."""
    rows = [(rel, label) for _, label, rel in sop.read_index(root, 'train')]
    return {'train_images': len(rows),
            'train_sha256': hashlib.sha256(json.dumps(rows).encode()).hexdigest()}


class Checkpointer(chainer.training.Extension):
    """Every iteration: agree on a stop request, and checkpoint when due or stopping.

    Registered on every rank (the gather and the agreement are collective); only rank 0
    writes. It runs after every other extension, so a checkpoint holds the iteration's
    complete state, the same as a run that never stopped would have at that point.
    """
    trigger = 1, 'iteration'
    priority = -1000
    name = 'checkpointer'

    def __init__(self, comm, is_root, interval, keep, stop_signal, record):
        self.comm = comm
        self.is_root = is_root
        self.interval = interval
        self.stop_signal = stop_signal
        self.record = record
        self.stopped_by = None
        self.last_path = None
        self._saved_at = None
        self._state = None
        self._snapshot = extensions.snapshot(savefun=save, filename=FILENAME, n_retains=keep)

    def initialize(self, trainer):
        self._state = _JobState(trainer, self.record)
        self._snapshot._target = self._state
        if self.is_root:
            self._snapshot.initialize(trainer)
            # A process killed mid-write leaves chainer's temporary folder behind.
            for name in os.listdir(trainer.out):
                if name.startswith('tmpsnapshot_iter_'):
                    shutil.rmtree(os.path.join(trainer.out, name), ignore_errors=True)

    @staticmethod
    def finished(trainer):
        """Whether this is the run's last iteration."""
        updater = trainer.updater
        length, unit = trainer.stop_trigger.get_training_length()
        return updater.iteration >= length if unit == 'iteration' else (
            updater.epoch_detail >= length)

    def due(self, trainer):
        return self.finished(trainer) or trainer.updater.is_new_epoch or bool(
            self.interval and trainer.updater.iteration % self.interval == 0)

    def stop_requested(self, trainer):
        """True on every rank when any rank received a stop signal (one small allreduce).

        At the run's last iteration a stop is not recorded: the run is complete anyway."""
        from mpi4py import MPI
        mine = self.stop_signal.signum or 0
        agreed = self.comm.mpi_comm.allreduce(mine, op=MPI.MAX)
        if agreed and self.stopped_by is None and not self.finished(trainer):
            self.stopped_by = agreed
        return bool(agreed)

    def __call__(self, trainer):
        if self.stop_requested(trainer) or self.due(trainer):
            self.save(trainer)
            # A signal that came while the checkpoint was written stops the job now, not
            # after another iteration and a second checkpoint.
            self.stop_requested(trainer)

    def save(self, trainer):
        if self._saved_at == trainer.updater.iteration:
            return
        collect(trainer, self.comm)
        if self.is_root:
            self._snapshot(trainer)
            self.last_path = os.path.join(trainer.out, FILENAME.format(trainer))
        self._saved_at = trainer.updater.iteration

    def finalize(self):
        self._snapshot.finalize()


class _StopOr:
    """The trainer's stop trigger, a stop agreed by the checkpointer, or a run at or past
    its end (chainer's interval trigger fires only as it crosses the end: a run resumed
    with fewer epochs than its checkpoint holds would train on)."""

    def __init__(self, trigger, checkpointer):
        self.trigger = trigger
        self.checkpointer = checkpointer

    def __call__(self, trainer):
        return (self.checkpointer.stopped_by is not None or self.trigger(trainer)
                or self.checkpointer.finished(trainer))

    def serialize(self, serializer):
        if hasattr(self.trigger, 'serialize'):
            self.trigger.serialize(serializer)

    def get_training_length(self):
        return self.trigger.get_training_length()


def attach(trainer, comm, is_root, interval, keep, stop_signal, record):
    """Add the checkpointer to ``trainer``, and the stop that ``stop_signal`` (an installed
    ``liveness.StopSignal``) asks for; returns the checkpointer. ``record`` (rank 0's
    ``describe_run``, None on the others) goes into every checkpoint it writes, and
    ``load`` compares a checkpoint's with it."""
    checkpointer = Checkpointer(comm, is_root, interval, keep, stop_signal, record)
    trainer.extend(checkpointer)
    trainer.stop_trigger = _StopOr(trainer.stop_trigger, checkpointer)
    return checkpointer


def load(trainer, comm, is_root, resume, out):
    """Restore ``trainer`` on every rank from the checkpoint ``resume`` names: '' none,
    'auto' the newest in ``out`` that reads, a file, or a folder (its newest that reads).

    Rank 0 chooses and reads the file, checks that it fits this run (``fit``) and
    broadcasts it, so every rank resumes from the same one and errors are raised on every
    rank alike. Either way rank 0's weights are broadcast before the first update. Returns
    ``(resumed, lines)``: ``(path, iteration)``, or None for a fresh start; and the lines
    for rank 0 to print (checkpoints skipped and why, where it resumed, what changed on
    resume). Raises ``CheckpointError``.
    """
    checkpointer = trainer.get_extension('checkpointer')
    error = path = data = arrays = None
    notes, changed = [], []
    if is_root:
        try:
            path, data, arrays, notes, changed = choose(
                resume, out, checkpointer.record, comm.size)
        except CheckpointError as e:
            error = str(e)
    error, path, data, notes, changed = comm.mpi_comm.bcast(
        (error, path, data, notes, changed), root=0)
    if error:
        raise CheckpointError(error)
    if path is None:
        _mark_synchronized(trainer.updater.get_optimizer('main'), comm)
        return None, notes
    problem = None
    try:
        if arrays is None:  # rank 0 read it already; the others read the same bytes
            arrays, _ = read_checkpoint(data, path)
        trainer.serialize(npz.NpzDeserializer(arrays))
    except (KeyError, ValueError, TypeError, weights.WeightsError) as e:
        problem = ('checkpoint {} does not fit this job ({}: {}); give another with '
                   'resume=PATH, or start afresh in another out folder'.format(
                       path, type(e).__name__, e))
    # A problem seen by one rank only must stop every rank, not leave the others waiting.
    problems = [p for p in comm.mpi_comm.allgather(problem) if p]
    if problems:
        raise CheckpointError(problems[0])
    _mark_synchronized(trainer.updater.get_optimizer('main'), comm)
    iteration = trainer.updater.iteration
    return (path, iteration), notes + [
        'resumed from {} at iteration {}'.format(path, iteration)] + changed


def choose(resume, out, record, ranks):
    """On rank 0: ``(path, data, arrays, notes, changed)`` of the checkpoint ``resume``
    names (path, data and arrays None for a fresh start), read and checked against this
    run's ``record`` and rank count. ``notes`` are lines about the choice (the newer
    checkpoints that did not read and why, or a fresh start), ``changed`` what may change
    on resume and did. Raises ``CheckpointError``."""
    fresh = None, None, None
    if not resume:
        return fresh + ([], [])
    folder = out if resume == 'auto' else os.path.abspath(os.path.expanduser(resume))
    if resume == 'auto' and not os.path.exists(out):
        return fresh + (['resume=auto: {} does not exist yet; starting afresh'.format(out)],
                        [])
    if not os.path.isdir(folder):
        if not os.path.exists(folder):
            raise CheckpointError('resume={}: no such checkpoint file; give an existing '
                                  'snapshot_iter_<N>.npz, or resume=auto'.format(resume))
        try:
            data = weights.read_bytes(folder)
            arrays, saved = read_checkpoint(data, folder)
        except weights.Unreadable as e:
            raise CheckpointError('resume={}: {}; give an intact checkpoint with resume=PATH, '
                                  'or resume=auto (the newest in out that reads)'.format(
                                      resume, e))
        return folder, data, arrays, [], fit(folder, saved, record, ranks)
    found = [os.path.join(folder, name) for _, name in reversed(_checkpoints(folder))]
    if not found and resume == 'auto':
        return fresh + (['resume=auto: {} holds no checkpoint (snapshot_iter_<N>.npz); '
                         'starting afresh'.format(out)], [])
    if not found:
        raise CheckpointError('resume={}: the folder holds no checkpoint '
                              '(snapshot_iter_<N>.npz); give a checkpoint file, or '
                              'resume=auto to start fresh when none exists'.format(resume))
    skipped = []
    for path in found:
        try:
            data = weights.read_bytes(path)
            arrays, saved = read_checkpoint(data, path)
        except weights.Unreadable as e:
            skipped.append(str(e))
            continue
        return path, data, arrays, [
            'resume={}: skipped a checkpoint that does not read: {}'.format(resume, why)
            for why in skipped], fit(path, saved, record, ranks)
    raise CheckpointError('resume={}: none of the {} checkpoint(s) in {} reads ({}); move '
                          'them away to start afresh, or give one with resume=PATH'.format(
                              resume, len(found), folder, '; '.join(skipped)))


def fit(path, saved, record, ranks):
    """The ``changed on resume: key old -> new`` lines for resuming the checkpoint ``path``,
    whose record is ``saved``, in a run of ``ranks`` ranks whose record is ``record``.
    Raises ``CheckpointError`` (one line) for a change that alters what the checkpoint
    means: a rank count that does not divide its ``train.chunks``, the train split's
    content, a key of ``REFUSED``."""
    refusal = rank_count_refusal(_flat(saved['config']).get('train.chunks'), ranks,
                                 _flat(record['config']).get('train.batch_size'),
                                 _flat(record['config']).get('train.split_chunks'))
    if refusal:
        raise CheckpointError('checkpoint {}: {}'.format(path, refusal))
    old, new = _flat(saved['config']), _flat(record['config'])
    refused = ['{} {} -> {} ({})'.format(key, _show(old.get(key)), _show(new.get(key)), why)
               for key, why in REFUSED.items() if old.get(key) != new.get(key)]
    if saved['data'] != record['data']:
        refused.append('the train split (data.root) {} -> {} (other images or labels: the '
                       'checkpoint\'s shards and iterator orders index its list; data.root '
                       'may move, its content may not change)'.format(
                           _show_data(saved['data']), _show_data(record['data'])))
    if refused:
        raise CheckpointError('checkpoint {} cannot resume in this run, which changes what it '
                              'means: {}; resume with the values it was written with, or '
                              'start afresh in another out folder'.format(
                                  path, '; '.join(refused)))
    return ['changed on resume: {} {} -> {}'.format(key, _show(old.get(key)), _show(new[key]))
            for key in new if key != 'resume' and old.get(key, _MISSING) != new[key]]


_MISSING = object()


def rank_count_refusal(chunks, ranks, batch_size=None, split_chunks=False, fresh=False):
    """Why a run of ``chunks`` chunks per global batch cannot go on ``ranks`` ranks (one
    line naming the counts that can), or None. A rank takes ``chunks / ranks`` whole
    chunks; more ranks than chunks split chunks into other BatchNorm groups, which only
    ``split_chunks`` allows (``stream.parts_of_rank``). ``fresh``: no checkpoint is resumed,
    so the line offers another train.chunks rather than another out folder."""
    if chunks and chunks % ranks == 0:
        return None
    splits = chunks and ranks > chunks and ranks % chunks == 0 and batch_size and \
        batch_size % (ranks // chunks) == 0
    if splits and split_chunks:
        return None
    works = [n for n in range(1, (chunks or 0) + 1) if chunks % n == 0]
    if splits:
        split = ' (or split each chunk in {} with train.split_chunks=true)'.format(
            ranks // chunks)
    elif split_chunks:
        split = (' (train.split_chunks=true needs a rank count that is a multiple of {} and '
                 'splits each chunk\'s {} images evenly)'.format(chunks, batch_size))
    else:
        split = ''
    otherwise = ('set train.chunks to a multiple of {} (0: the rank count)'.format(ranks)
                 if fresh else 'start afresh in another out folder')
    return ('the run has {} chunks per global batch (train.chunks), which {} rank(s) '
            'cannot share; run it on {} ranks{}, or {}'.format(
                chunks, ranks, ', '.join(map(str, works)) or 'as many', split, otherwise))


def run_chunks(config, comm, is_root):
    """The run's chunks per global batch, set as ``config.train.chunks`` and returned;
    collective. A value set in the config stays; 0 means the chunks of the checkpoint
    ``config.resume`` names (read from its record alone) or, at a fresh start, the rank
    count. Raises ``CheckpointError`` when the rank count does not divide it."""
    chunks = error = None
    if is_root:
        saved = _saved_chunks(config.resume, config.out)
        chunks = config.train.chunks or saved or comm.size
        error = rank_count_refusal(chunks, comm.size, config.train.batch_size,
                                   config.train.split_chunks, fresh=saved is None)
    chunks, error = comm.mpi_comm.bcast((chunks, error), root=0)
    if error:
        raise CheckpointError(error)
    config.train.chunks = chunks
    return chunks


def _saved_chunks(resume, out):
    """``train.chunks`` in the record of the checkpoint that ``resume`` would choose (the
    newest with a readable record, for a folder), or None; only the record is read.
    ``choose`` reads and checks the whole file later."""
    if not resume:
        return None
    folder = out if resume == 'auto' else os.path.abspath(os.path.expanduser(resume))
    paths = ([os.path.join(folder, name) for _, name in reversed(_checkpoints(folder))]
             if os.path.isdir(folder) else [folder])
    for path in paths:
        try:
            with zipfile.ZipFile(path) as archive, archive.open('meta/record.npy') as f:
                record = json.loads(_untext(numpy.load(f, allow_pickle=False)))
            return int(record['config']['train']['chunks'])
        except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError):
            continue
    return None


def _show_data(fingerprint):
    return '{} images, sha256 {:.12}'.format(fingerprint.get('train_images'),
                                             str(fingerprint.get('train_sha256')))


def _flat(tree, prefix=''):
    """``{'a.b': value}`` of a nested dict of config sections."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, prefix + key + '.'))
        else:
            flat[prefix + key] = value
    return flat


def _show(value):
    if isinstance(value, str):
        return value or "''"
    return '(not recorded)' if value is None else json.dumps(value)


def settle(out, resumed):
    """On rank 0 after ``load`` (``resumed``: the first of what it returned): the lines to
    print about the checkpoints already in ``out``.

    Checkpoints that are not of this run would be mixed up with its own by ``resume=auto``
    (highest iteration) and by the retention of ``checkpoint.keep`` (oldest files first),
    so they are renamed ``*.npz.superseded``: after a resume from an earlier checkpoint,
    the later ones (the abandoned run's); at a fresh start, all of them (an earlier run's).
    """
    found = _checkpoints(out)
    if not resumed:
        foreign = [name for _, name in found]
        what = ('starting afresh in {}: renamed the checkpoints of an earlier run there to '
                '*.superseded, so that resume=auto continues this run: '.format(out))
    else:
        foreign = [name for iteration, name in found if iteration > resumed[1]]
        what = 'renamed the later checkpoints of the abandoned run to *.superseded: '
    for name in foreign:
        os.replace(os.path.join(out, name), os.path.join(out, name + '.superseded'))
    return [what + ', '.join(foreign)] if foreign else []


def _mark_synchronized(optimizer, comm):
    """Broadcast rank 0's weights (the initial or the restored ones) now, so that the first
    update updates.

    ChainerMN's multi-node optimizer spends its first ``update`` on broadcasting rank 0's
    weights instead of updating. At a fresh start that left the optimizer without state
    (momentum) after iteration 1, so a checkpoint of iteration 1 (a stop during start-up)
    could not be resumed; after a resume it would drop one update and the run would
    diverge from an uninterrupted one."""
    if hasattr(optimizer, 'is_changed'):
        optimizer.is_changed(optimizer.target)
        comm.bcast_data(optimizer.target)
