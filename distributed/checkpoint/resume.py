"""The resume policy: which checkpoint a run continues from, and whether it may.

A checkpoint resumes on any rank count that divides the run's ``train.chunks`` (nothing in
it is per rank: ``files``); rank 0 reads it and broadcasts it, so ranks need no shared
filesystem. A resume compares the checkpoint's record with its own run's
(``describe_run``) and refuses the changes in ``REFUSED``; any other change is printed. The
lr schedule is a pure function of the updater's iteration, so it resumes with it.
"""
import hashlib
import json
import os

from chainer.serializers import npz

from distributed import safe_npz
from distributed.checkpoint.files import (FORMAT, CheckpointError, list_checkpoints,
                                          read_checkpoint, read_record)
from distributed.config import to_dict
from distributed.data import resolve_root, sop

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


def describe_run(config, runtime):
    """What the checkpoints of this run mean, on rank 0 (None on the other ranks, which
    neither write nor compare): the resolved config, the rank count and the train split's
    fingerprint (``train_fingerprint``)."""
    if not runtime.is_root:
        return None
    return {'format': FORMAT, 'config': to_dict(config), 'ranks': runtime.size,
            'data': train_fingerprint(resolve_root(config.data.root))}


def train_fingerprint(root):
    """``{'train_images': n, 'train_sha256': hex}``: the train split of the SOP tree
    ``root`` as its list of (path relative to ``root``, super-class); the same data moved
    to another folder gives the same fingerprint."""
    rows = [(rel, label) for _, label, rel in sop.read_index(root, 'train')]
    return {'train_images': len(rows),
            'train_sha256': hashlib.sha256(json.dumps(rows).encode()).hexdigest()}


def resume(trainer, config, runtime):
    """Restore ``trainer`` from the checkpoint ``config.resume`` names, if any (``load``),
    and on rank 0 settle the other checkpoints in ``config.out`` (``settle``) and print
    what happened; collective. Returns ``(path, iteration)``, or None for a fresh start.
    Raises ``CheckpointError``."""
    resumed, lines = load(trainer, runtime.comm, runtime.is_root, config.resume, config.out)
    if runtime.is_root:
        for line in lines + settle(config.out, resumed):
            print(line, flush=True)
        if resumed and trainer.get_extension('checkpointer').finished(trainer):
            print(f'the checkpoint is at or past the end of this run (train.epochs='
                  f'{config.train.epochs}): nothing to train', flush=True)
    return resumed


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
        synchronize_weights(trainer.updater.get_optimizer('main'), comm)
        return None, notes
    problem = None
    try:
        if arrays is None:  # rank 0 read it already; the others read the same bytes
            arrays, _ = read_checkpoint(data, path)
        trainer.serialize(npz.NpzDeserializer(arrays))
    except (KeyError, ValueError, TypeError, safe_npz.NpzError) as e:
        problem = ('checkpoint {} does not fit this job ({}: {}); give another with '
                   'resume=PATH, or start afresh in another out folder'.format(
                       path, type(e).__name__, e))
    # A problem seen by one rank only must stop every rank, not leave the others waiting.
    problems = [p for p in comm.mpi_comm.allgather(problem) if p]
    if problems:
        raise CheckpointError(problems[0])
    synchronize_weights(trainer.updater.get_optimizer('main'), comm)
    iteration = trainer.updater.iteration
    return (path, iteration), notes + [
        f'resumed from {path} at iteration {iteration}'] + changed


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
        return fresh + ([f'resume=auto: {out} does not exist yet; starting afresh'],
                        [])
    if not os.path.isdir(folder):
        if not os.path.exists(folder):
            raise CheckpointError('resume={}: no such checkpoint file; give an existing '
                                  'snapshot_iter_<N>.npz, or resume=auto'.format(resume))
        try:
            data = safe_npz.read_bytes(folder)
            arrays, saved = read_checkpoint(data, folder)
        except safe_npz.Unreadable as e:
            raise CheckpointError('resume={}: {}; give an intact checkpoint with resume=PATH, '
                                  'or resume=auto (the newest in out that reads)'.format(
                                      resume, e))
        return folder, data, arrays, [], fit(folder, saved, record, ranks)
    found = [os.path.join(folder, name) for _, name in reversed(list_checkpoints(folder))]
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
            data = safe_npz.read_bytes(path)
            arrays, saved = read_checkpoint(data, path)
        except safe_npz.Unreadable as e:
            skipped.append(str(e))
            continue
        return path, data, arrays, [
            f'resume={resume}: skipped a checkpoint that does not read: {why}'
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
        raise CheckpointError(f'checkpoint {path}: {refusal}')
    old, new = _flat(saved['config']), _flat(record['config'])
    refused = [f'{key} {_show(old.get(key))} -> {_show(new.get(key))} ({why})'
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
    return [f'changed on resume: {key} {_show(old.get(key))} -> {_show(new[key])}'
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
        split = f' (or split each chunk in {ranks // chunks} with train.split_chunks=true)'
    elif split_chunks:
        split = (' (train.split_chunks=true needs a rank count that is a multiple of {} and '
                 'splits each chunk\'s {} images evenly)'.format(chunks, batch_size))
    else:
        split = ''
    otherwise = (f'set train.chunks to a multiple of {ranks} (0: the rank count)'
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
    paths = ([os.path.join(folder, name) for _, name in reversed(list_checkpoints(folder))]
             if os.path.isdir(folder) else [folder])
    for path in paths:
        try:
            return int(read_record(path)['config']['train']['chunks'])
        except (KeyError, ValueError, TypeError):
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
    found = list_checkpoints(out)
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


def synchronize_weights(optimizer, comm):
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
