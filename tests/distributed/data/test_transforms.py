"""The fast path from a file path has chainercv's augmentation semantics, in uint8."""
import multiprocessing
import random

import chainer
import numpy
import pytest
from chainercv.utils import read_image

from chainercv import transforms

from distributed.bench.pipeline import write_jpegs
from distributed.data.transforms import TrainTransform, ValTransform, draws, train_box
from distributed.data.converter import InputConverter

MEAN = numpy.array([123.0, 117.0, 104.0], numpy.float32).reshape(3, 1, 1)


@pytest.fixture(scope='module')
def jpegs(tmp_path_factory):
    return write_jpegs(str(tmp_path_factory.mktemp('jpegs')), 8, seed=3)


def test_train_output_shape_and_dtype(jpegs):
    for path in jpegs:  # includes grayscale JPEGs
        img, label = TrainTransform(64)((path, 5))
        assert img.shape == (3, 64, 64) and img.dtype == numpy.uint8 and label == 5
        assert img.flags.c_contiguous
        # The decoded-array path gives the same contract.
        img, _ = TrainTransform(64)((read_image(path), 5))
        assert img.shape == (3, 64, 64) and img.dtype == numpy.uint8


def chainercv_with_key(path, crop_size, key):
    """chainercv's float32 path over the crop box and flip that ``draws(key)`` gives."""
    img = read_image(path)
    rng = draws(key)
    x0, y0, x1, y1 = train_box(img.shape[1], img.shape[2], rng)
    img = transforms.resize(img[:, y0:y1, x0:x1], (crop_size, crop_size))
    return transforms.flip(img, x_flip=bool(rng.uniform() < 0.5))


def test_images_normalised_by_the_converter_match_chainercvs_path(jpegs):
    # chainercv's path (float32, mean subtracted per image) against the product's (uint8,
    # mean subtracted per batch by the converter): the same numbers up to uint8 rounding.
    converter = InputConverter(MEAN)
    for i, path in enumerate(jpegs):
        key = (7, 0, i)
        product, _ = converter([TrainTransform(40)((read_image(path), 0, key))])
        reference = chainercv_with_key(path, 40, key) - MEAN
        assert product.dtype == numpy.float32
        numpy.testing.assert_allclose(product[0], reference, atol=0.5 + 1e-4)


def test_the_key_decides_the_crop_and_flip_in_any_process(jpegs):
    # (seed, epoch, position): the same key gives the same image whatever Python's and
    # NumPy's global generators hold; another key another crop.
    transform = TrainTransform(32)
    random.seed(1)
    numpy.random.seed(1)
    first, _ = transform((jpegs[0], 0, (3, 1, 5)))
    random.seed(2)
    numpy.random.seed(2)
    again, _ = transform((jpegs[0], 0, (3, 1, 5)))
    assert numpy.array_equal(first, again)
    others = [transform((jpegs[0], 0, (3, 1, p)))[0] for p in range(6, 12)]
    assert not all(numpy.array_equal(first, other) for other in others)


@pytest.fixture(scope='module')
def smooth_jpegs(tmp_path_factory):
    return write_jpegs(str(tmp_path_factory.mktemp('smooth')), 8, seed=3, noise=0)


def test_train_draws_the_same_crop_and_flip_on_either_path(smooth_jpegs):
    # Same key: the fast path from a file and chainercv's path over the decoded array take
    # the same crop box and flip, so the images agree up to resampling (uint8 rounding,
    # reduced-size JPEG decoding; on smooth pictures, so that aliasing in either resize
    # does not hide a shifted box).
    transform = TrainTransform(224)
    flips = []
    for seed in range(40):
        path = smooth_jpegs[seed % len(smooth_jpegs)]
        fast, _ = transform((path, 0, (seed, 0, 0)))
        slow, _ = transform((read_image(path), 0, (seed, 0, 0)))
        fast, slow = fast.astype(numpy.float32), slow.astype(numpy.float32)
        assert numpy.abs(fast - slow).mean() < 1.5
        mirrored = numpy.abs(fast[:, :, ::-1] - slow).mean()
        flips.append(numpy.abs(fast - slow).mean() < mirrored)
    assert all(flips)


@pytest.fixture(scope='module')
def ramp(tmp_path_factory):
    """A JPEG that brightens from left to right: any crop of it, resized, still does unless
    it was mirrored."""
    from PIL import Image
    x = numpy.linspace(0, 255, 240, dtype=numpy.float32)
    pixels = numpy.broadcast_to(x[None, :, None], (180, 240, 3))
    path = str(tmp_path_factory.mktemp('ramp') / 'ramp.JPG')
    Image.fromarray(pixels.astype(numpy.uint8)).save(path, quality=95)
    return path


def test_train_crops_cover_the_scale_range(jpegs, ramp):
    # A crop of a small part of the image is smoother than a crop of all of it: over many
    # draws the output's spread of detail varies.
    transform = TrainTransform(32)
    random.seed(0)
    detail = [numpy.abs(numpy.diff(transform((jpegs[0], 0))[0].astype(float), axis=2)).mean()
              for _ in range(60)]
    assert max(detail) > 2 * min(detail)
    # And the output from a file path is mirrored about half the time: on the ramp, its
    # left half is then the brighter one (even the narrowest crop spans 50 grey levels).
    random.seed(0)
    mirrored = 0
    for _ in range(400):
        img = transform((ramp, 0))[0].astype(float)
        left, right = img[:, :, :16].mean(), img[:, :, 16:].mean()
        assert abs(left - right) > 5
        mirrored += left > right
    assert 150 < mirrored < 250


def test_val_equals_chainercv(smooth_jpegs):
    # The recipe's sizes: a one-pixel shift of the crop would cost several grey levels.
    transform = ValTransform(224, 256)
    for path in smooth_jpegs:
        fast, _ = transform((path, 1))
        slow, _ = transform((read_image(path), 1))
        assert fast.shape == slow.shape == (3, 224, 224)
        assert fast.dtype == slow.dtype == numpy.uint8
        assert numpy.abs(fast.astype(int) - slow.astype(int)).mean() < 1.0


@pytest.fixture
def forkserver():
    """The start method the product's loader uses (set for the whole process, as chainer's
    MultiprocessIterator takes no context), put back afterwards for the tests that follow."""
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method('forkserver', force=True)
    yield
    multiprocessing.set_start_method(previous, force=True)


def test_forkserver_workers_draw_different_crops(jpegs, forkserver):
    dataset = chainer.datasets.TransformDataset([(jpegs[0], 0)] * 8, TrainTransform(32))
    iterator = chainer.iterators.MultiprocessIterator(dataset, 8, repeat=False, shuffle=False,
                                                      n_processes=2)
    try:
        images = [img for img, _ in iterator.next()]
    finally:
        iterator.finalize()
    distinct = {img.tobytes() for img in images}
    assert len(distinct) == len(images)
