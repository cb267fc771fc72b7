"""Checkpoints that survive pre-emption: consistent across ranks, atomic, resumable exactly.

One file per checkpoint, ``snapshot_iter_<N>.npz`` in ``out``, written by rank 0 only with
chainer's ``extensions.snapshot`` (it writes into a temporary folder inside ``out`` and
renames, so a crash mid-write leaves the previous checkpoints intact; ``n_retains`` keeps the
newest ``checkpoint.keep``). The file is a regular trainer snapshot (model, optimizer with its
momentum, updater iteration, extension states such as LogReport's log and the triggers) plus,
under ``ranks/<r>/state``, what differs between ranks: the training iterator position and
order, the shuffling and augmentation random states and the BatchNorm statistics. Ranks send
that to rank 0 with one gather; on resume rank 0 reads the file and broadcasts it, so ranks
need no shared filesystem.

The lr schedule is a pure function of the updater's iteration, so it resumes with it.
"""
import functools
import io
import os
import pickle
import random
import re
import shutil

import chainer
import numpy
from chainer.serializers import npz
from chainer.training import extensions

FILENAME = 'snapshot_iter_{.updater.iteration}.npz'
PATTERN = re.compile(r'^snapshot_iter_(\d+)\.npz$')
RANK_STATE = re.compile(r'^ranks/\d+/state$')


class CheckpointError(ValueError):
    """A checkpoint asked for cannot be used; the message names it and what to do."""


def seed_random_state(seed, rank):
    """Seed python's and numpy's global generators for this rank.

    chainercv's random transforms draw from these global generators, so they are part of the
    state a checkpoint saves."""
    random.seed(seed + rank)
    numpy.random.seed(seed + rank)


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


def _training_iterator(trainer):
    return trainer.updater.get_iterator('main')


def _model(trainer):
    return trainer.updater.get_optimizer('main').target


def rank_state(trainer):
    """What this rank alone knows: iterator, random states, BatchNorm statistics."""
    iterator = _training_iterator(trainer)
    it_state = npz.serialize(iterator)
    sampler = getattr(iterator, 'order_sampler', None)
    sampler_rng = getattr(sampler, '_random', None)
    model = _model(trainer)
    # Persistent values only (BatchNorm statistics differ per rank); weights are shared.
    model_state = {
        '/'.join(filter(None, (path.strip('/'), name))): numpy.asarray(
            chainer.backend.CpuDevice().send(getattr(link, name)))
        for path, link in model.namedlinks() for name in link._persistent
        if getattr(link, name) is not None}
    return {
        'iterator': it_state,
        'order_rng': sampler_rng.get_state() if sampler_rng is not None else None,
        'python_rng': random.getstate(),
        'numpy_rng': numpy.random.get_state(),
        'persistent': model_state,
    }


def restore_rank_state(trainer, state):
    iterator = _training_iterator(trainer)
    iterator.serialize(npz.NpzDeserializer(state['iterator']))
    sampler_rng = getattr(getattr(iterator, 'order_sampler', None), '_random', None)
    if sampler_rng is not None and state['order_rng'] is not None:
        sampler_rng.set_state(state['order_rng'])
    random.setstate(state['python_rng'])
    numpy.random.set_state(state['numpy_rng'])
    _model(trainer).serialize(npz.NpzDeserializer(state['persistent'], strict=False))


class _JobState:
    """The trainer plus every rank's own state, as one serializable target."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.ranks = []

    def serialize(self, serializer):
        self.trainer.serialize(serializer)
        for r, state in enumerate(self.ranks):
            blob = numpy.frombuffer(pickle.dumps(state), dtype=numpy.uint8)
            serializer['ranks'][str(r)]('state', blob)


class Checkpointer(chainer.training.Extension):
    """Every iteration: agree on a stop request, and checkpoint when due or stopping.

    Registered on every rank (the gather and the agreement are collective); only rank 0
    writes. It runs after every other extension, so a checkpoint holds the iteration's
    complete state, the same as a run that never stopped would have at that point.
    """
    trigger = 1, 'iteration'
    priority = -1000
    name = 'checkpointer'

    def __init__(self, comm, is_root, interval, keep, stop_signal):
        self.comm = comm
        self.is_root = is_root
        self.interval = interval
        self.stop_signal = stop_signal
        self.stopped_by = None
        self.last_path = None
        self._saved_at = None
        self._state = None
        # Uncompressed: zlib on ~200 MB of float32 weights costs seconds and saves little.
        self._snapshot = extensions.snapshot(
            savefun=functools.partial(npz.save_npz, compression=False), filename=FILENAME,
            n_retains=keep)

    def initialize(self, trainer):
        self._state = _JobState(trainer)
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
        states = self.comm.gather_obj(rank_state(trainer))
        if self.is_root:
            self._state.ranks = states
            self._snapshot(trainer)
            self._state.ranks = []
            self.last_path = os.path.join(trainer.out, FILENAME.format(trainer))
        self._saved_at = trainer.updater.iteration

    def finalize(self):
        self._snapshot.finalize()


class _StopOr:
    """The trainer's stop trigger, or a stop agreed by the checkpointer."""

    def __init__(self, trigger, checkpointer):
        self.trigger = trigger
        self.checkpointer = checkpointer

    def __call__(self, trainer):
        return self.checkpointer.stopped_by is not None or self.trigger(trainer)

    def serialize(self, serializer):
        if hasattr(self.trigger, 'serialize'):
            self.trigger.serialize(serializer)

    def get_training_length(self):
        return self.trigger.get_training_length()


def attach(trainer, comm, is_root, interval, keep, stop_signal):
    """Add the checkpointer to ``trainer``, and the stop that ``stop_signal`` (an installed
    ``liveness.StopSignal``) asks for; returns the checkpointer."""
    checkpointer = Checkpointer(comm, is_root, interval, keep, stop_signal)
    trainer.extend(checkpointer)
    trainer.stop_trigger = _StopOr(trainer.stop_trigger, checkpointer)
    return checkpointer


def resolve(resume, out):
    """The checkpoint path the ``resume`` setting means, or None for a fresh start."""
    if not resume:
        return None
    if resume == 'auto':
        return find_latest(out)
    path = os.path.abspath(os.path.expanduser(resume))
    if os.path.isdir(path):
        found = find_latest(path)
        if found is None:
            raise CheckpointError('resume={}: the folder holds no checkpoint '
                                  '(snapshot_iter_<N>.npz); give a checkpoint file, or '
                                  'resume=auto to start fresh when none exists'.format(resume))
        return found
    if not os.path.isfile(path):
        raise CheckpointError('resume={}: no such checkpoint file; give an existing '
                              'snapshot_iter_<N>.npz, or resume=auto'.format(resume))
    return path


def load(trainer, comm, is_root, resume, out):
    """Restore ``trainer`` on every rank from the checkpoint ``resume`` names.

    Rank 0 finds and reads the file and broadcasts it, so every rank resumes from the same
    one and errors are raised on every rank alike. Returns ``(path, iteration)`` or None."""
    data = error = path = None
    if is_root:
        try:
            path = resolve(resume, out)
            if path is not None:
                with open(path, 'rb') as f:
                    data = f.read()
        except (CheckpointError, OSError) as e:
            error = str(e)
    error, path, data = comm.mpi_comm.bcast((error, path, data), root=0)
    if error:
        raise CheckpointError(error)
    if path is None:
        return None
    state = problem = None
    try:
        with numpy.load(io.BytesIO(data)) as archive:
            saved = sum(1 for key in archive.files if RANK_STATE.match(key))
            if not saved:
                problem = ('{} holds no rank states: it is not a checkpoint written by '
                           'launch.train; give another with resume=PATH'.format(path))
            elif saved != comm.size:
                # Shards, iterator positions and the scaled lr all depend on the count.
                problem = ('checkpoint {} was written by a job of {} rank(s), this one has {}; '
                           'resume it with {} ranks, or start afresh in another out folder'
                           .format(path, saved, comm.size, saved))
            else:
                trainer.serialize(npz.NpzDeserializer(archive))
                state = pickle.loads(archive['ranks/{}/state'.format(comm.rank)].tobytes())
    except (KeyError, ValueError, OSError, pickle.UnpicklingError) as e:
        problem = ('checkpoint {} does not fit this job ({}); it may come from another '
                   'config, rank count or version. Give another with resume=PATH, or move it '
                   'away'.format(path, e))
    # A problem seen by one rank only must stop every rank, not leave the others waiting.
    problems = [p for p in comm.mpi_comm.allgather(problem) if p]
    if problems:
        raise CheckpointError(problems[0])
    restore_rank_state(trainer, state)
    _mark_synchronized(trainer.updater.get_optimizer('main'), comm)
    return path, trainer.updater.iteration


def settle(out, resumed):
    """On rank 0 after ``load`` (``resumed`` is what it returned): the lines to print about
    the checkpoints already in ``out``.

    After resuming from an earlier checkpoint, the later ones belong to an abandoned run:
    ``resume=auto`` (highest iteration) or the retention of ``checkpoint.keep`` (oldest
    files first) would mix them up with the new run's, so they are renamed
    ``*.npz.superseded``. A fresh start leaves an earlier run's checkpoints and says so."""
    found = _checkpoints(out)
    if not resumed:
        return ['note: starting afresh in {}, which holds checkpoints of an earlier run (up '
                'to {}); this run overwrites those it reaches, and resume=auto takes the '
                'highest-numbered one'.format(out, found[-1][1])] if found else []
    later = [name for iteration, name in found if iteration > resumed[1]]
    for name in later:
        os.replace(os.path.join(out, name), os.path.join(out, name + '.superseded'))
    return ['renamed the later checkpoints of the abandoned run to *.superseded: '
            + ', '.join(later)] if later else []


def _mark_synchronized(optimizer, comm):
    """Broadcast the restored weights now, so the first update after resuming updates.

    ChainerMN's multi-node optimizer spends its first ``update`` on broadcasting rank 0's
    weights instead of updating; at a fresh start that is wanted, after a resume it would
    drop one update and the run would diverge from an uninterrupted one."""
    if hasattr(optimizer, 'is_changed'):
        optimizer.is_changed(optimizer.target)
        comm.bcast_data(optimizer.target)
