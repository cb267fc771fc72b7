"""distributed.predict and launch.predict: top-k per image, bad files named, others answered."""
import os
import shutil

import numpy
import pytest
from PIL import Image

from distributed.config import ConfigError
from distributed.predict import Predictor, format_prediction, load_predict_config
from launching import REPO, TINY, run_launcher
from saved_models import save_model

SMOKE = os.path.join(REPO, 'configs/smoke.yaml')


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp('model') / 'model.npz')


def some_images(root, n=2):
    with open(os.path.join(root, 'Ebay_test.txt')) as f:
        return [os.path.join(root, line.split()[3]) for line in f.read().splitlines()[1:n + 1]]


def test_probabilities_sum_to_one_in_order(small_sop, model_file, tmp_path):
    rgba = tmp_path / 'transparent.png'
    Image.fromarray(numpy.full((40, 50, 4), 128, numpy.uint8), 'RGBA').save(rgba)
    predictor = Predictor(load_predict_config(SMOKE, ['model=' + model_file] + TINY))
    for path in some_images(small_sop) + [str(rgba)]:
        prediction = predictor(path)
        assert not prediction.error
        probs = [p for _, _, p in prediction.top]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
    full = Predictor(load_predict_config(SMOKE, ['model=' + model_file, 'top_k=12'] + TINY))
    assert sum(p for _, _, p in full(path).top) == pytest.approx(1.0, abs=1e-5)
    assert {name for _, name, _ in full(path).top} >= {'chair', 'coffee_maker'}


def test_a_prediction_is_what_evaluate_counts(small_sop, model_file, tmp_path,
                                              one_rank_runtime):
    """The probabilities of a file equal the model's softmax on the example that
    launch.evaluate's dataset makes of the same file (decoding, transform, mean)."""
    import chainer
    from distributed.evaluate import load_eval_config, load_shard
    args = ['model=' + model_file, 'data.root=' + small_sop, 'out=' + str(tmp_path)] + TINY
    predictor = Predictor(load_predict_config(SMOKE, args))
    shard = load_shard(load_eval_config(SMOKE, args), one_rank_runtime)
    model = predictor.model
    for i, path in enumerate(some_images(small_sop, 3)):
        img, _ = shard[i]
        x = (img.astype(numpy.float32) - model.predictor.mean)[None]
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            expected = chainer.functions.softmax(model.predictor(x)).array[0]
        numpy.testing.assert_allclose(predictor.probabilities(path), expected, rtol=1e-5,
                                      atol=1e-7)


def test_unreadable_files_are_named(model_file, tmp_path):
    predictor = Predictor(load_predict_config(SMOKE, ['model=' + model_file] + TINY))
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    for path in (str(tmp_path / 'missing.jpg'), str(text), str(tmp_path)):
        prediction = predictor(path)
        assert prediction.top == [] and path in prediction.error
        assert format_prediction(prediction).startswith('error: cannot read ' + path)


@pytest.mark.parametrize('override, message', [
    ('top_k=0', 'top_k must be within 1..12, not 0'),
    ('model=/nowhere/model.npz', 'model file /nowhere/model.npz does not exist'),
])
def test_bad_config_is_named(override, message, model_file):
    with pytest.raises(ConfigError, match=message):
        Predictor(load_predict_config(SMOKE, ['model=' + model_file, override]))


def test_launcher_answers_good_images_and_fails_on_bad_ones(small_sop, model_file, tmp_path):
    good = some_images(small_sop)
    # A name with '=' in it is still an image when the file exists.
    odd = tmp_path / 'a=b.JPG'
    shutil.copy(good[0], odd)
    missing = str(tmp_path / 'missing.jpg')
    done = run_launcher('launch.predict', ['-c', SMOKE, 'model=' + model_file, 'top_k=3'] +
                        TINY + [good[0], missing, good[1], str(odd)])
    assert done.returncode == 1, done.stderr
    for path in good + [str(odd)]:
        assert path in done.stdout
    assert done.stdout.count('%') == 9                  # three images x top 3
    assert 'error: cannot read {} as an image'.format(missing) in done.stderr
    assert '1 of 4 images could not be classified' in done.stderr
    assert 'Traceback' not in done.stderr
    ok = run_launcher('launch.predict', ['-c', SMOKE, 'model=' + model_file] + TINY + good[:1])
    assert ok.returncode == 0 and ok.stdout.count('%') == 5, ok.stderr
    shown = run_launcher('launch.predict', ['-c', SMOKE, '--print-config', 'top_k=2'])
    assert shown.returncode == 0 and 'top_k: 2' in shown.stdout, shown.stderr


@pytest.mark.parametrize('kind', ['resnet101', 'object_array', 'lazy_shape'])
def test_launcher_refuses_weights_that_do_not_fit_in_one_line(kind, small_sop, model_file,
                                                              tmp_path):
    """A resnet101 file with the default model.arch=resnet50 (chainer's load_npz would
    read 320 of its 626 arrays), an object array whose unpickling creates a file, a first
    convolution for 4 channels (a lazily sized layer: chainer sizes it by the file): each
    is one line and exit 2, with no image classified and no code run."""
    from files import weights_that_do_not_fit
    marker = tmp_path / 'ran'
    path = str(tmp_path / 'model.npz')
    if kind == 'resnet101':
        save_model(path, arch='resnet101')
        message = 'holds the weights of a resnet101'
    else:
        message = weights_that_do_not_fit(kind, model_file, path, marker)
    done = run_launcher('launch.predict', ['-c', SMOKE, 'model=' + path] + TINY
                        + some_images(small_sop, 1))
    assert not marker.exists(), 'loading the model ran the code in it'
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith('error: model file {} '.format(path)), done.stderr[-3000:]
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ''
