"""The run's train stream: the same images, chunks, order and augmentations at any rank
count and with either loader; one update per global batch whatever the rank count."""
import json
import os
import subprocess
import sys

import numpy
import pytest

from distributed.data.stream import ChunkIterator, parts_of_rank, permutation
from launching import MPIEXEC, REPO

PROBE = os.path.join(REPO, 'tests', 'helpers', 'stream_probe.py')
TINY = ['data.crop_size=32', 'data.scale_size=36', 'train.batch_size=3',
        'train.progress=false', 'device=cpu', 'train.seed=5', 'data.workers=2']


class Positions:
    def __getitem__(self, p):
        return p


def stream(images, batch, chunks, ranks, batches):
    """[global batch][chunk] of stream positions, put together from every rank's
    iterator."""
    iterators = [ChunkIterator(Positions(), images, batch, chunks, ranks, r)
                 for r in range(ranks)]
    out = []
    for _ in range(batches):
        out.append([chunk for it in iterators for chunk in it.next()])
        assert len({(it.epoch, it.epoch_detail, it.is_new_epoch) for it in iterators}) == 1
    return out, iterators[0]


def test_every_epoch_is_the_whole_split_and_chunks_do_not_depend_on_the_rank_count():
    images, batch, chunks = 10, 2, 4  # a global batch of 8: batches span epoch ends
    one, it = stream(images, batch, chunks, 1, 5)
    for ranks in (2, 4):
        assert stream(images, batch, chunks, ranks, 5)[0] == one
    flat = [p for chunks_ in one for chunk in chunks_ for p in chunk]
    assert flat == list(range(40))  # consecutive positions: no image left out
    assert it.epoch == 4 and it.epoch_detail == 4.0 and it.is_new_epoch
    assert sorted(permutation(5, 3, images)) == list(range(images))
    assert list(permutation(5, 3, images)) != list(permutation(5, 4, images))
    # More ranks than chunks (train.split_chunks): each computes an equal part of one.
    split, _ = stream(images, batch, chunks, 8, 5)
    assert [[p for part in chunks_ for p in part] for chunks_ in split] == [
        [p for chunk in chunks_ for p in chunk] for chunks_ in one]
    assert parts_of_rank(2, 4, 4, 3) == [(1, 2, 2)]
    for ranks in (3, 6):
        with pytest.raises(ValueError, match='{} ranks cannot share 4 chunks'.format(ranks)):
            parts_of_rank(4, 2, ranks, 0)
    with pytest.raises(ValueError, match='12 ranks cannot share 4 chunks of 2 images'):
        parts_of_rank(4, 2, 12, 0)


def probe(what, ranks, out, *overrides):
    command = [sys.executable, PROBE, what, str(out)] + TINY + list(overrides)
    if ranks > 1:
        command = [MPIEXEC, '-n', str(ranks)] + command
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_one_rank_of_two_chunks_and_two_ranks_see_the_same_augmented_images(
        small_sop, tmp_path):
    # Each image as its SHA-1 after decoding, crop and flip: the same bytes in the same
    # chunk of the same global batch, on 1 rank (2 chunks accumulated) and on 2 ranks,
    # with the serial loader and with loader worker processes.
    root = 'data.root=' + small_sop
    runs = {(ranks, loader): probe('images', ranks, tmp_path / '{}{}.json'.format(
        ranks, loader), root, 'train.chunks=2', 'data.loader=' + loader)
        for ranks in (1, 2) for loader in ('serial', 'multiprocess')}
    first = runs[1, 'serial']
    assert len(first) == 4 and all(len(chunks) == 2 and len(chunks[0]) == 3
                                   for chunks in first)
    assert len({img for chunks in first for chunk in chunks for img in chunk}) == 24
    for key, seen in runs.items():
        assert seen == first, key


@pytest.mark.slow
def test_the_gradient_of_two_ranks_equals_one_rank_accumulating_two_chunks(
        small_sop, tmp_path):
    # ResNet-50 (BatchNorm per chunk): one update's gradients averaged over 2 ranks, and
    # the running statistics averaged over them, against 1 rank that computes both chunks.
    args = ['data.root=' + small_sop, 'train.chunks=2', 'data.loader=serial']
    one = probe('step', 1, tmp_path / 'one.json', *args)
    two = probe('step', 2, tmp_path / 'two.json', *args)
    assert abs(one['loss'] - two['loss']) < 1e-5 * abs(one['loss'])
    assert one['grads'].keys() == two['grads'].keys()
    assert any(norm > 0 for norm in one['grad_norms'].values())
    for name in one['grads']:
        numpy.testing.assert_allclose(two['grads'][name], one['grads'][name], rtol=1e-3,
                                      atol=1e-5 * max(one['grad_norms'][name], 1e-12),
                                      err_msg=name)
        numpy.testing.assert_allclose(two['grad_norms'][name], one['grad_norms'][name],
                                      rtol=1e-4, err_msg=name)
    for name in one['stats']:
        numpy.testing.assert_allclose(two['stats'][name], one['stats'][name], rtol=1e-4,
                                      atol=1e-6, err_msg=name)
