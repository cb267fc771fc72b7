import filecmp
import os
import re
import subprocess
import sys

import distributed  # noqa: F401  (NumPy-2 shims before chainer)
import numpy as np
import pytest
from chainercv.datasets import OnlineProductsDataset
from PIL import Image

from distributed.data import minisop
from distributed.data.minisop import ensure_minisop, make_minisop
from distributed.data.sop import INDEX_FILES, INDEX_HEADER, SUPER_CLASS_NAMES
from launch import make_minisop as cli

SMALL = dict(products_per_class=2, images_per_product=(1, 2), size_range=(40, 60))


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    return make_minisop(str(tmp_path_factory.mktemp('minisop') / 'sop'))


def read_index(root, split):
    with open(os.path.join(root, INDEX_FILES[split])) as f:
        lines = f.read().splitlines()
    assert lines[0] == INDEX_HEADER
    return [(int(a), int(b), int(c), p) for a, b, c, p in (ln.split() for ln in lines[1:])]


def all_files(root):
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


def test_layout_matches_sop(tree):
    train, test, info = (read_index(tree, s) for s in ('train', 'test', 'all'))
    assert info == train + test
    assert [r[0] for r in info] == list(range(1, len(info) + 1))
    classes = sorted({r[1] for r in info})
    assert classes == list(range(1, len(classes) + 1))
    assert max(r[1] for r in train) < min(r[1] for r in test)
    assert len(classes) == 12 * minisop.DEFAULTS['products_per_class']
    names = re.compile(r'^([a-z_]+)_final/(\d{12})_(\d+)\.JPG$')
    numbers = {}
    for _, cls, sup, path in info:
        m = names.match(path)
        assert m, path
        assert m.group(1) == SUPER_CLASS_NAMES[sup - 1]
        numbers.setdefault(cls, (m.group(2), []))[1].append(int(m.group(3)))
        assert numbers[cls][0] == m.group(2)
        assert os.path.isfile(os.path.join(tree, path))
    assert all(ns == list(range(len(ns))) for _, ns in numbers.values())
    assert len({num for num, _ in numbers.values()}) == len(numbers)
    images = [f for f in all_files(tree) if f.endswith('.JPG')]
    assert sorted(r[3] for r in info) == images
    assert 700 <= len(info) <= 900
    assert sorted(os.listdir(tree)) == sorted(
        [minisop.MARKER] + list(INDEX_FILES.values())
        + [n + '_final' for n in SUPER_CLASS_NAMES])


def test_chainercv_loader_reads_both_splits(tree):
    seen = {}
    for split in ('train', 'test'):
        ds = OnlineProductsDataset(tree, split)
        img, label, super_label = ds[0]
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[0] == 3
        assert 0 <= img.min() and img.max() <= 255
        assert sorted(set(ds.super_class_ids.tolist())) == list(range(12))
        seen[split] = set(ds.class_ids.tolist())
    assert seen['train'] and seen['test'] and not seen['train'] & seen['test']


def test_grayscale_files_and_varied_sizes(tree):
    info = read_index(tree, 'all')
    modes, sizes, gray_rows = [], [], []
    for row in info:
        with Image.open(os.path.join(tree, row[3])) as im:
            modes.append(im.mode)
            sizes.append(im.size)
            if im.mode == 'L':
                gray_rows.append(row)
    assert set(modes) == {'RGB', 'L'}
    assert 0.04 < modes.count('L') / len(modes) < 0.2
    assert len({s[0] for s in sizes}) > 50 and len({s[1] for s in sizes}) > 50
    assert min(min(s) for s in sizes) >= 72
    ratios = [w / h for w, h in sizes]
    assert min(ratios) < 0.6 and max(ratios) > 1.6
    ds = OnlineProductsDataset(tree, 'train')
    index = {p: i for i, p in enumerate(ds.paths)}
    gray_train = [index[os.path.join(tree, r[3])] for r in gray_rows
                  if os.path.join(tree, r[3]) in index]
    assert gray_train
    img = ds[gray_train[0]][0]
    assert img.shape[0] == 3 and np.array_equal(img[0], img[1]) and np.array_equal(img[1], img[2])


def test_same_parameters_give_identical_bytes(tree, tmp_path):
    again = make_minisop(str(tmp_path / 'again'))
    files = all_files(tree)
    assert files == all_files(again)
    _, mismatch, errors = filecmp.cmpfiles(tree, again, files, shallow=False)
    assert not mismatch and not errors
    other = make_minisop(str(tmp_path / 'other'), seed=1, **SMALL)
    first = make_minisop(str(tmp_path / 'first'), seed=0, **SMALL)
    assert not filecmp.cmp(os.path.join(other, 'Ebay_info.txt'),
                           os.path.join(first, 'Ebay_info.txt'), shallow=False)


def test_existing_trees_are_kept_refused_or_replaced(tmp_path):
    root = str(tmp_path / 'sop')
    os.mkdir(root)  # an empty folder is taken over
    assert make_minisop(root, **SMALL) == root
    marker = os.path.join(root, minisop.MARKER)
    stamp = os.stat(marker).st_mtime_ns
    assert make_minisop(root, **SMALL) == root
    assert os.stat(marker).st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='other parameters'):
        make_minisop(root, **dict(SMALL, seed=3))
    make_minisop(root, overwrite=True, **dict(SMALL, seed=3))
    assert minisop.read_marker(root)['seed'] == 3
    foreign = tmp_path / 'photos'
    foreign.mkdir()
    (foreign / 'holiday.jpg').write_bytes(b'x')
    with pytest.raises(FileExistsError, match='other files'):
        make_minisop(str(foreign), **SMALL)
    assert os.listdir(str(foreign)) == ['holiday.jpg']
    assert not [e for e in os.listdir(str(tmp_path)) if '.tmp-' in e]


def test_crashed_writer_leaves_no_tree(tmp_path, monkeypatch):
    root = str(tmp_path / 'sop')
    os.mkdir(str(tmp_path / '.sop.tmp-stale'))

    def crash(path, params):
        open(os.path.join(path, 'Ebay_train.txt'), 'w').close()
        raise RuntimeError('disk full')

    monkeypatch.setattr(minisop, '_write_tree', crash)
    with pytest.raises(RuntimeError):
        make_minisop(root, **SMALL)
    assert not os.path.exists(root)
    assert not [e for e in os.listdir(str(tmp_path)) if '.tmp-' in e]


@pytest.mark.parametrize('bad', [
    dict(products_per_class=1), dict(images_per_product=(3, 2)),
    dict(images_per_product=(0, 2)), dict(size_range=(8, 100)),
    dict(grayscale_fraction=1.5)])
def test_bad_parameters_are_named(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_minisop(str(tmp_path / 'sop'), **bad)


def test_ensure_minisop_caches_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv('DISTRIBUTED_CACHE', str(tmp_path))
    path = ensure_minisop(**SMALL)
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith('minisop-v{}-'.format(minisop.GENERATOR_VERSION))
    assert ensure_minisop(**SMALL) == path
    assert ensure_minisop(**dict(SMALL, seed=5)) != path
    assert ensure_minisop(str(tmp_path / 'elsewhere'), **SMALL).startswith(
        str(tmp_path / 'elsewhere'))
    with pytest.raises(TypeError, match='colour'):
        ensure_minisop(colour=True)


WORKER = '''
import os, sys, time
import distributed
from distributed.data.minisop import ensure_minisop
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
print(ensure_minisop(sys.argv[1]))
'''


def test_concurrent_ensure_minisop_gives_one_tree(tmp_path):
    cache, go = str(tmp_path / 'cache'), str(tmp_path / 'go')
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, cache, go],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    open(go, 'w').close()
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], [r[1] for r in results]
    paths = {r[0].strip() for r in results}
    assert len(paths) == 1
    trees = [e for e in os.listdir(cache) if not e.startswith('.')]
    assert [os.path.join(cache, t) for t in trees] == list(paths)
    assert not [e for e in os.listdir(cache) if '.tmp-' in e]
    assert len(OnlineProductsDataset(paths.pop(), 'test')) > 300


def random_sized_crop(img, rs, out=32):
    # The training augmentation: 8%-100% of the area, aspect 3/4-4/3, random flip.
    _, H, W = img.shape
    h, w = H, W
    for _ in range(10):
        area = rs.uniform(0.08, 1.0) * H * W
        ratio = np.exp(rs.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= W and 0 < ch <= H:
            h, w = ch, cw
            break
    y, x = rs.randint(0, H - h + 1), rs.randint(0, W - w + 1)
    crop = img[:, y:y + h, x:x + w]
    if rs.rand() < 0.5:
        crop = crop[:, :, ::-1]
    pil = Image.fromarray(crop.transpose(1, 2, 0).astype(np.uint8)).resize((out, out))
    return np.asarray(pil, dtype=np.float32).transpose(2, 0, 1)


def tiny_features(crop, colour):
    gray = crop.mean(0)
    gx = gray[1:-1, 2:] - gray[1:-1, :-2]
    gy = gray[2:, 1:-1] - gray[:-2, 1:-1]
    mag = np.hypot(gx, gy) + 1e-6
    angle = np.arctan2(gy, gx) % np.pi
    hist = np.bincount((angle / np.pi * 8).astype(int).ravel() % 8,
                       weights=mag.ravel(), minlength=8)
    lap = (4 * gray[1:-1, 1:-1] - gray[2:, 1:-1] - gray[:-2, 1:-1]
           - gray[1:-1, 2:] - gray[1:-1, :-2])
    f = list(hist / hist.sum()) + [mag.mean() / (gray.std() + 1),
                                   np.abs(lap).mean() / (mag.mean() + 1)]
    if colour:
        m = crop.reshape(3, -1).mean(1)
        f += list(m / (m.sum() + 1)) + [crop.std(0).mean() / 50]
    return np.array(f)


def nearest_class_mean(tree, colour, test_filter=None):
    rs = np.random.RandomState(0)
    data = {}
    for split in ('train', 'test'):
        ds = OnlineProductsDataset(tree, split)
        keep = [i for i in range(len(ds))
                if split == 'train' or test_filter is None or test_filter(ds.paths[i])]
        x = np.stack([tiny_features(random_sized_crop(ds.get_example_by_keys(i, (0,))[0], rs),
                                    colour) for i in keep])
        data[split] = x, ds.super_class_ids[keep]
    (x, y), (xt, yt) = data['train'], data['test']
    mu, sd = x.mean(0), x.std(0) + 1e-6
    means = np.stack([((x - mu) / sd)[y == k].mean(0) for k in range(12)])
    dist = ((((xt - mu) / sd)[:, None, :] - means[None]) ** 2).sum(2)
    return (dist.argmin(1) == yt).mean(), len(yt)


def test_super_classes_are_learnable_from_random_crops(tree):
    # Chance is 1/12; crude colour and gradient-orientation statistics of one random crop
    # per image already find most super-classes, so a CNN has a clear signal to learn.
    accuracy, _ = nearest_class_mean(tree, colour=True)
    assert accuracy > 0.6


def test_grayscale_images_are_told_apart_by_texture(tree):
    def is_gray(path):
        with Image.open(path) as im:
            return im.mode == 'L'

    accuracy, n = nearest_class_mean(tree, colour=False, test_filter=is_gray)
    assert n >= 20 and accuracy > 0.35


def test_cli_writes_reports_and_refuses(tmp_path, capsys):
    out = str(tmp_path / 'sop')
    cli.main([out, '--products-per-class', '2', '--images-per-product', '1', '2',
              '--size-range', '40', '60', '--seed', '7'])
    line = capsys.readouterr().out
    train, test = len(read_index(out, 'train')), len(read_index(out, 'test'))
    assert line == 'minisop: {} train + {} test images in {}\n'.format(train, test, out)
    foreign = tmp_path / 'photos'
    foreign.mkdir()
    (foreign / 'a.txt').write_text('mine')
    with pytest.raises(SystemExit) as exc:
        cli.main([str(foreign), '--products-per-class', '2'])
    assert exc.value.code != 0 and 'photos' in str(exc.value.code)
    assert (foreign / 'a.txt').read_text() == 'mine'
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path / 'x'), '--products-per-class', '1'])
    assert 'products_per_class' in str(exc.value.code)
    cli.main([str(foreign), '--products-per-class', '2', '--size-range', '40', '60', '--force'])
    assert minisop.read_marker(str(foreign))['products_per_class'] == 2
