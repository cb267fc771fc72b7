"""A checkpoint resumes on another rank count that divides its train.chunks, through the
real launcher and real MPI ranks: the later steps see the uninterrupted run's images and
lr, and their losses and weights follow it to float tolerance (gradients summed in another
order); a count that does not divide the chunks is refused in one line."""
import json
import shutil

import pytest

from jobs import TINY
from launching import run_launcher
from runs import assert_follows, log, scalars, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tree(tiny_sop, tmp_path_factory):
    """tiny_sop with 23 test images: no rank count from 2 to 22 divides the split."""
    root = tmp_path_factory.mktemp('odd') / 'sop'
    shutil.copytree(tiny_sop, root)
    index = (root / 'Ebay_test.txt').read_text().splitlines()
    (root / 'Ebay_test.txt').write_text('\n'.join(index[:-1]) + '\n')
    return root


def test_stop_on_two_ranks_resume_on_one(tree, tmp_path):
    # 24 images, 2 chunks of 4: 3 global batches per epoch.
    straight = tmp_path / 'straight'
    train(tree, straight, 2, 'train.epochs=3', 'train.log_interval=1')
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(straight / 'snapshot_iter_3.npz', resumed)
    done = train(tree, resumed, 1, 'train.epochs=3', 'train.log_interval=1', 'resume=auto')
    assert 'resumed from {} at iteration 3'.format(resumed / 'snapshot_iter_3.npz') \
        in done.stdout
    assert 'on 1 rank;' in done.stdout
    assert_follows(straight, resumed, range(4, 10))

    # The logged test numbers are sums over the 23 test images, each once: launch.evaluate
    # on 3 ranks gives the logged accuracy exactly and the logged loss to float tolerance
    # (the images' losses summed in other groups).
    logged = log(straight)[9]
    evaluated = tmp_path / 'evaluated'
    done = run_launcher('launch.evaluate', ['model={}'.format(straight / 'model.npz'),
                                            'out={}'.format(evaluated),
                                            'data.root={}'.format(tree)] + TINY, ranks=3)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((evaluated / 'eval.json').read_text())
    assert result['n'] == 23
    assert result['top1'] == logged['validation/main/accuracy']
    assert result['loss'] == pytest.approx(logged['validation/main/loss'], rel=1e-5)
    assert 'loss {:.4f}'.format(result['loss']) in done.stdout

    # Rank 0 wrote the logged numbers as TensorBoard scalars, one point per log line.
    written = scalars(straight)
    for key in ('main/loss', 'main/accuracy', 'lr'):
        assert written[key] == pytest.approx({i: e[key] for i, e in log(straight).items()},
                                             rel=1e-6), key
    assert written['validation/main/accuracy'] == pytest.approx(
        {i: e['validation/main/accuracy'] for i, e in log(straight).items()
         if 'validation/main/accuracy' in e}, rel=1e-6)
    assert sorted(written['images_per_sec']) == list(range(1, 10))
    assert all(value > 0 for value in written['images_per_sec'].values())


def test_more_ranks_than_chunks_only_when_asked_and_said(tree, tmp_path):
    # 2 chunks of 4 on 4 ranks: refused, then split in parts of 2 images when asked.
    first = tmp_path / 'first'
    train(tree, first, 2, 'train.epochs=1')
    args = ['data.root={}'.format(tree), 'out={}'.format(first), 'train.epochs=2',
            'train.log_interval=1', 'resume=auto'] + TINY
    refused = run_launcher('launch.train', args, ranks=4, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert 'which 4 rank(s) cannot share; run it on 1, 2 ranks (or split each chunk in 2 ' \
        'with train.split_chunks=true)' in refused.stderr
    done = train(tree, first, 4, 'train.epochs=2', 'train.log_interval=1', 'resume=auto',
                 'train.split_chunks=true')
    assert ('train.split_chunks: 4 ranks split each of the 2 chunks in 2 parts of 2 images; '
            'BatchNorm normalises the parts') in done.stdout
    assert sorted(log(first)) == [3, 4, 5, 6]
    assert {entry['lr'] for entry in log(first).values()} == {0.02}  # 2 x 0.01, still


def test_stop_four_chunks_on_four_ranks_resume_on_two_and_refuse_three(tree, tmp_path):
    # 4 chunks of 2 (4 ranks on 2 cores: oversubscribed), 3 global batches per epoch.
    straight = tmp_path / 'straight'
    args = ['train.batch_size=2', 'train.epochs=2', 'train.log_interval=1']
    train(tree, straight, 4, *args)
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(straight / 'snapshot_iter_3.npz', resumed)
    refused = run_launcher('launch.train', ['data.root={}'.format(tree),
                                            'out={}'.format(resumed), 'resume=auto']
                           + TINY + args, ranks=3, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith('error:')]
    assert errors == ['error: the run has 4 chunks per global batch (train.chunks), which 3 '
                      'rank(s) cannot share; run it on 1, 2, 4 ranks, or start afresh in '
                      'another out folder'], refused.stderr[-3000:]
    train(tree, resumed, 2, *args, 'resume=auto')
    assert_follows(straight, resumed, range(4, 7))


def test_a_log_file_holds_the_log_lines_alone_and_tensorboard_every_logged_number(tree,
                                                                                  tmp_path):
    # 1 rank, 24 images of 4: 6 iterations an epoch, evaluated at 6 and 12, logged every 4.
    # The evaluation of iteration 6 is in the log line of iteration 8: TensorBoard must have
    # it there too. The progress bar is asked for, and the output is a file (a pipe).
    out = tmp_path / 'out'
    done = train(tree, out, 1, 'train.epochs=2', 'train.log_interval=4', 'train.progress=true')
    assert 'iters/sec' not in done.stdout and 'this epoch' not in done.stdout, done.stdout
    logged = log(out)
    assert sorted(logged) == [4, 8, 12] and 'validation/main/loss' in logged[8]
    written = scalars(out)
    for key in ('main/loss', 'validation/main/loss', 'validation/main/accuracy', 'lr'):
        assert written[key] == pytest.approx({i: e[key] for i, e in logged.items()
                                              if key in e}, rel=1e-6), key
