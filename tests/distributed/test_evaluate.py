"""distributed.evaluate and launch.evaluate: exact counts, one or many ranks, clear errors."""
import json
import os
import re
import shutil

import numpy
import pytest
from PIL import Image

from distributed.config import ConfigError
from distributed.data.sop import SUPER_CLASS_NAMES
from distributed.evaluate import (Counts, allreduce_counts, format_report, load_eval_config,
                                  plot_confusion, summarize, topk_hits)
from distributed.weights import load_model
from launching import REPO, TINY, run_launcher
from saved_models import save_model

SMOKE = os.path.join(REPO, 'configs/smoke.yaml')


@pytest.fixture(scope='module')
def uneven_sop(tmp_path_factory):
    """A tree whose test split has an odd number of images (uneven on 2 ranks)."""
    from distributed.data.minisop import make_minisop
    root = make_minisop(str(tmp_path_factory.mktemp('uneven') / 'sop'), products_per_class=2,
                        images_per_product=(1, 2), size_range=(32, 48), seed=1)
    with open(os.path.join(root, 'Ebay_test.txt')) as f:
        assert (len(f.read().splitlines()) - 1) % 2 == 1
    return root


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp('model') / 'model.npz')


# Six classes; every row and the expected outcome worked out by hand.
SCORES = numpy.array([
    [0.1, 0.5, 0.2, 0.0, 0.0, 0.0],        # label 1: top-1 right
    [0.9, 0.05, 0.01, 0.02, 0.015, 0.005],  # label 5: predicted 0, label ranks 6th
    [0.3, 0.3, 0.1, 0.0, 0.0, 0.0],        # label 1: tie with 0, the lower index wins
    [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],        # label 4: right
], numpy.float32)
LABELS = numpy.array([1, 5, 1, 4])


def test_topk_hits_by_hand():
    assert topk_hits(SCORES, LABELS, 1).tolist() == [True, False, False, True]
    assert topk_hits(SCORES, LABELS, 5).tolist() == [True, False, True, True]
    assert topk_hits(SCORES, LABELS, 6).all()


def test_counts_and_summary_by_hand():
    counts = Counts.zeros(6)
    counts.add(SCORES[:2], LABELS[:2])
    counts.add(SCORES[2:], LABELS[2:])
    expected = numpy.zeros((6, 6), int)
    expected[1, 1] = expected[5, 0] = expected[1, 0] = expected[4, 4] = 1
    assert counts.confusion.tolist() == expected.tolist()
    assert counts.hits.tolist() == [[0, 1, 0, 0, 1, 0], [0, 2, 0, 0, 1, 0]]
    # Each row's cross-entropy is log(sum(exp(scores))) - the label's score.
    by_hand = numpy.log(numpy.exp(SCORES.astype(numpy.float64)).sum(axis=1)) \
        - SCORES[numpy.arange(4), LABELS]
    assert counts.loss == pytest.approx(by_hand.sum(), rel=1e-6)
    result = summarize(counts, names='abcdef')
    assert (result['n'], result['top1'], result['top5']) == (4, 0.5, 0.75)
    assert result['loss'] == pytest.approx(by_hand.mean(), rel=1e-6)
    assert result['per_class'][1] == {'id': 1, 'name': 'b', 'count': 2, 'correct': 1,
                                      'accuracy': 0.5, 'top5': 1.0}
    assert result['per_class'][0]['count'] == 0 and result['per_class'][0]['accuracy'] is None
    assert result['per_class'][5]['accuracy'] == 0.0 and result['confusion'][5][0] == 1
    assert '50.0%' in format_report(result)


@pytest.mark.mpi
def test_allreduce_sums_every_ranks_counts_exactly(world):
    import chainermn
    comm = chainermn.create_communicator('naive')
    # Rank r sees r + 1 images, so the shards differ in size.
    rng = numpy.random.RandomState(0)
    shards = [(rng.rand(r + 1, 12).astype(numpy.float32), rng.randint(0, 12, r + 1))
              for r in range(comm.size)]
    mine = Counts.zeros(12)
    mine.add(*shards[comm.rank])
    everyone = Counts.zeros(12)
    for scores, labels in shards:
        everyone.add(scores, labels)
    total = allreduce_counts(mine, comm)
    assert total.confusion.tolist() == everyone.confusion.tolist()
    assert total.hits.tolist() == everyone.hits.tolist()
    assert total.loss == pytest.approx(everyone.loss, rel=1e-12)
    assert total.confusion.sum() == sum(range(1, comm.size + 1))


def test_confusion_plot_copes_with_empty_rows(tmp_path):
    confusion = numpy.zeros((12, 12), int)
    confusion[0, 0], confusion[0, 3], confusion[5, 5] = 3, 1, 2
    with numpy.errstate(all='raise'):
        plot_confusion(confusion, str(tmp_path / 'c.png'))
    assert (tmp_path / 'c.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_model_shorthand_keeps_the_network_section(model_file):
    config = load_eval_config(SMOKE, ['model=' + model_file, 'split=train'])
    assert config.model.path == model_file and config.model.arch == 'resnet50'
    assert config.split == 'train' and config.data.crop_size == 64


def test_the_model_shorthand_takes_the_path_as_typed():
    # model=PATH is model.path=PATH, a text key: YAML would make 0012 the octal 10.
    assert load_eval_config(SMOKE, ['model=0012']).model.path == '0012'
    assert load_eval_config(SMOKE, ['model=12:30']).model.path == '12:30'


def test_bad_split_is_named(model_file):
    with pytest.raises(ConfigError, match="split must be one of test, train, not 'val'"):
        load_eval_config(SMOKE, ['model=' + model_file, 'split=val'])


def test_missing_weights_are_named_and_default_to_out_model_npz(tmp_path):
    # Checked where the model loads, which every rank does before agreeing: a file missing
    # on one node only must not leave the other ranks waiting.
    missing = str(tmp_path / 'nope.npz')
    for args, path in ((['model=' + missing], missing),
                       (['out=' + str(tmp_path)], str(tmp_path / 'model.npz'))):
        with pytest.raises(ConfigError, match='model file {} does not exist'.format(path)):
            load_model(load_eval_config(SMOKE, args))


def test_a_folder_for_the_weights_is_named_as_a_folder(tmp_path, model_file):
    with pytest.raises(ConfigError, match='model file {} is a folder, not a weights file; '
                       'pass the model.npz that launch.train wrote'.format(tmp_path)):
        load_model(load_eval_config(SMOKE, ['model=' + str(tmp_path)]))
    shutil.copy(model_file, str(tmp_path / 'model.npz'))
    with pytest.raises(ConfigError, match='model file {} is a folder, not a weights file; '
                       'pass the model.npz in it, model={}'.format(
                           tmp_path, tmp_path / 'model.npz')):
        load_model(load_eval_config(SMOKE, ['model=' + str(tmp_path)]))


def test_unloadable_weights_are_named(tmp_path):
    garbage = tmp_path / 'garbage.npz'
    garbage.write_text('not a model')
    config = load_eval_config(SMOKE, ['model=' + str(garbage)])
    with pytest.raises(ConfigError, match='model file {} is not an .npz archive'.format(
            garbage)):
        load_model(config)


@pytest.fixture(scope='module')
def resnet101_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp('model101') / 'model.npz', arch='resnet101')


def test_weights_are_used_whole_or_refused(model_file, resnet101_file, tmp_path):
    """chainer's load_npz reads the keys the network asks for and ignores the others, and
    sizes a lazily sized layer by the file: each of these loaded, or failed later."""
    from files import arrays_of, rewrite
    variants = {'resnet101': (resnet101_file, 'holds the weights of a resnet101, not of the '
                              'model.arch=resnet50 this command builds .its res4 has 23 '
                              'bottleneck blocks, a resnet50\'s has 6.; pass '
                              'model.arch=resnet101')}
    arrays = arrays_of(model_file)
    for name, change, message in (
            ('extra', {'predictor/res6/W': numpy.ones(3, numpy.float32)},
             '0 of its 320 arrays are missing and 1 of the file\'s 321 would be left unused '
             r'\(e.g. predictor/res6/W\)'),
            ('missing', {'predictor/fc6/b': None},
             r'1 of its 320 arrays are missing \(e.g. predictor/fc6/b\) and 0 of the '
             'file\'s 319'),
            ('lazy_shape', {'predictor/conv1/conv/W': numpy.ones((64, 4, 7, 7), numpy.float32)},
             r'predictor/conv1/conv/W is float32 \(64, 4, 7, 7\) where the network has '
             r'float32 \(64, 3, 7, 7\)'),
            ('classes', {'predictor/fc6/W': numpy.ones((1000, 2048), numpy.float32)},
             r'predictor/fc6/W is float32 \(1000, 2048\) where')):
        changed = {k: v for k, v in dict(arrays, **change).items() if v is not None}
        rewrite(tmp_path / (name + '.npz'), changed)
        variants[name] = str(tmp_path / (name + '.npz')), message
    for path, message in variants.values():
        with pytest.raises(ConfigError, match='model file {} .*{}'.format(path, message)):
            load_model(load_eval_config(SMOKE, ['model=' + path]))
    # The right arch loads it whole.
    model = load_model(load_eval_config(SMOKE, ['model=' + resnet101_file,
                                                'model.arch=resnet101']))
    numpy.testing.assert_array_equal(model.predictor.fc6.W.array,
                                     arrays_of(resnet101_file)['predictor/fc6/W'])


def test_two_ranks_give_exactly_the_numbers_of_one(uneven_sop, model_file, tmp_path):
    results = {}
    for ranks in (1, 2):
        out = tmp_path / 'r{}'.format(ranks)
        done = run_launcher('launch.evaluate', ['-c', SMOKE, 'model=' + model_file,
                                                'data.root=' + uneven_sop, 'out=' + str(out),
                                                'train.batch_size=3'] + TINY
                            + ['train.eval_batch_size=1'], ranks=ranks)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count('top-1') == 2           # one report (title + header)
        assert ('on 1 rank;' if ranks == 1 else 'on 2 ranks;') in done.stdout, done.stdout
        # Progress: in a file, at most 10 lines, the last at the end.
        progress = [line for line in done.stderr.splitlines() if ': batch ' in line]
        assert 1 <= len(progress) <= 10, done.stderr[-3000:]
        assert re.search(r'batch (\d+)/\1$', progress[-1]), done.stderr[-3000:]
        assert (out / 'confusion.png').stat().st_size > 0
        results[ranks] = json.loads((out / 'eval.json').read_text())
    one = results[1]
    assert one['n'] == 17 and sum(map(sum, one['confusion'])) == 17
    assert [row['name'] for row in one['per_class']] == list(SUPER_CLASS_NAMES)
    assert {'top1', 'top5', 'loss', 'per_class', 'confusion', 'n'} <= set(one)
    # The counts are exact; the loss is summed in other groups on 2 ranks.
    assert results[2].pop('loss') == pytest.approx(one.pop('loss'), rel=1e-5)
    assert results[2] == one


def test_odd_and_broken_images_are_decoded_as_in_training_or_named(
        small_sop, model_file, tmp_path, one_rank_runtime):
    """An RGBA PNG behind a .JPG name is evaluated (alpha dropped, as training reads it); an
    undecodable file is named and skipped, or stops the evaluation with data.on_bad_image."""
    from distributed.data.datasets import BadImageError
    from distributed.evaluate import evaluate
    root = tmp_path / 'sop'
    shutil.copytree(small_sop, root)
    rels = [line.split()[3] for line in (root / 'Ebay_test.txt').read_text().splitlines()[1:]]
    rgba = Image.fromarray(numpy.full((40, 50, 4), 90, numpy.uint8), 'RGBA')
    rgba.save(root / rels[0], 'PNG')
    (root / rels[1]).write_bytes(b'not an image')
    args = ['model=' + model_file, 'data.root=' + str(root), 'out=' + str(tmp_path)] + TINY
    result = evaluate(load_eval_config(SMOKE, args), one_rank_runtime)
    assert result['n'] == len(rels) - 1 and result['skipped'] == 1
    assert str(root / rels[1]) in result['skipped_report']
    with pytest.raises(BadImageError, match=str(root / rels[1])):
        evaluate(load_eval_config(SMOKE, args + ['data.on_bad_image=error']), one_rank_runtime)


def test_two_ranks_stop_with_one_message_on_a_missing_model(uneven_sop, tmp_path):
    missing = str(tmp_path / 'missing.npz')
    done = run_launcher('launch.evaluate', ['-c', SMOKE, 'model=' + missing,
                                            'data.root=' + uneven_sop] + TINY,
                        ranks=2, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count('error: model file {} does not exist'.format(missing)) == 1
    assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('kind', ['resnet101', 'object_array', 'lazy_shape'])
def test_two_ranks_refuse_weights_that_do_not_fit_in_one_line(kind, uneven_sop, model_file,
                                                              resnet101_file, tmp_path):
    """A resnet101 file scored as a resnet50, an object array whose unpickling creates a
    file, a first convolution for 4 channels: each stops both ranks with one line and
    exit 2, nothing run, nothing written."""
    from files import weights_that_do_not_fit
    marker = tmp_path / 'ran'
    path, message = resnet101_file, 'pass model.arch=resnet101'
    if kind != 'resnet101':
        path = str(tmp_path / 'model.npz')
        message = weights_that_do_not_fit(kind, model_file, path, marker)
    out = tmp_path / 'out'
    done = run_launcher('launch.evaluate', ['-c', SMOKE, 'model=' + path, 'out=' + str(out),
                                            'data.root=' + uneven_sop] + TINY,
                        ranks=2, timeout=180)
    assert not marker.exists(), 'loading the model ran the code in it'
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count('error: model file {}'.format(path)) == 1, done.stderr[-3000:]
    assert message in done.stderr and 'Traceback' not in done.stderr, done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert not out.exists()
