"""Odd but decodable images are used; undecodable ones are named, then skipped or fatal."""
import distributed  # noqa: F401
import chainer
import numpy
import pytest
from PIL import Image

from distributed.data.datasets import BadImageError, SkipUnreadable
from distributed.data.transforms import TrainTransform, ValTransform


def write(tmp_path, name, img=None, data=None, fmt='JPEG'):
    path = tmp_path / name
    if img is not None:
        img.save(str(path), fmt)
    else:
        path.write_bytes(data)
    return str(path)


@pytest.fixture
def files(tmp_path):
    rgb = Image.new('RGB', (50, 40), (200, 30, 30))
    good = write(tmp_path, 'good.JPG', rgb)
    return {
        'good': good,
        'gray': write(tmp_path, 'gray.JPG', rgb.convert('L')),
        'cmyk': write(tmp_path, 'cmyk.JPG', rgb.convert('CMYK')),
        'palette_png': write(tmp_path, 'palette.JPG', rgb.convert('P'), fmt='PNG'),
        'rgba_png': write(tmp_path, 'rgba.JPG', rgb.convert('RGBA'), fmt='PNG'),
        'tiny': write(tmp_path, 'tiny.JPG', Image.new('RGB', (3, 2), (0, 90, 0))),
        'truncated': write(tmp_path, 'trunc.JPG', data=open(good, 'rb').read()[:300]),
        'empty': write(tmp_path, 'empty.JPG', data=b''),
        'text': write(tmp_path, 'text.JPG', data=b'not an image\n'),
    }


DECODABLE = ('good', 'gray', 'cmyk', 'palette_png', 'rgba_png', 'tiny')
BROKEN = ('truncated', 'empty', 'text')


@pytest.mark.parametrize('transform', [TrainTransform(32), ValTransform(32, 36)])
def test_every_decodable_image_gives_a_crop(files, transform):
    for name in DECODABLE:
        for _ in range(20):  # random crops of the tiny image must never be empty
            img, label = transform((files[name], 5))
            assert img.shape == (3, 32, 32) and img.dtype == numpy.uint8, name
            assert numpy.isfinite(img).all() and label == 5


def dataset(files, names):
    pairs = chainer.datasets.TupleDataset([files[n] for n in names], list(range(len(names))))
    return chainer.datasets.TransformDataset(pairs, TrainTransform(32))


def test_skip_names_the_file_and_substitutes_the_next(files, capsys):
    data = SkipUnreadable(dataset(files, ('good', 'truncated', 'empty', 'gray')), 'skip', 1)
    try:
        labels = [data[i][1] for i in range(4)]
        assert labels == [0, 3, 3, 3]
        assert data.skipped() == sorted([files['truncated'], files['empty']])
        err = capsys.readouterr().err
        assert 'rank 1: skipping unreadable image {}'.format(files['truncated']) in err
    finally:
        data.close()


def test_error_policy_names_the_file_and_rank(files):
    data = SkipUnreadable(dataset(files, ('good', 'text')), 'error', 1)
    try:
        with pytest.raises(BadImageError, match='rank 1: image .*text.JPG cannot be decoded'):
            data[1]
    finally:
        data.close()


def test_a_shard_of_only_broken_files_is_an_error(files):
    data = SkipUnreadable(dataset(files, BROKEN), 'skip', 0)
    try:
        with pytest.raises(BadImageError, match='none of its 3 images'):
            data[0]
    finally:
        data.close()
