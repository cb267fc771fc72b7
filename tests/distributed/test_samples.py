"""distributed.samples and launch.view_samples: the grids and the train/test overlap check."""
import os
import shutil

import pytest
from PIL import Image

from distributed.config import ConfigError
from distributed.samples import find_overlap, format_overlap, load_samples_config, sample_grid
from launching import REPO, run_launcher

SMOKE = os.path.join(REPO, 'configs/smoke.yaml')


@pytest.fixture
def sop_copy(tmp_path):
    """A fresh small tree per test, so planting an overlap spoils no other test."""
    from distributed.data.minisop import make_minisop
    return make_minisop(str(tmp_path / 'sop'), products_per_class=2, images_per_product=(1, 2),
                        size_range=(32, 48))


def index_rows(root, split):
    with open(os.path.join(root, 'Ebay_{}.txt'.format(split))) as f:
        return [line.split() for line in f.read().splitlines()[1:]]


def plant_copied_image(root):
    """Copy a train image under a new name and list it in the test split, as a new product."""
    image_id, _, super_id, rel = index_rows(root, 'train')[0]
    copy = rel.replace('.JPG', '_copy.JPG')
    shutil.copy(os.path.join(root, rel), os.path.join(root, copy))
    new_class = max(int(row[1]) for row in index_rows(root, 'test')) + 1
    with open(os.path.join(root, 'Ebay_test.txt'), 'a') as f:
        f.write('99999 {} {} {}\n'.format(new_class, super_id, copy))
    return rel, copy


def test_clean_tree_has_no_overlap(sop_copy):
    overlap = find_overlap(sop_copy)
    assert not overlap.found and overlap.products == [] and overlap.files == []
    assert overlap.sizes['train'][1] == overlap.sizes['test'][1] == 12   # products per split
    assert 'none: the splits are disjoint' in format_overlap(overlap, sop_copy)


def test_planted_overlap_is_found(sop_copy):
    rel, copy = plant_copied_image(sop_copy)
    # A test image filed under a train product: the product is in both splits.
    train_class = index_rows(sop_copy, 'train')[-1][1]
    test_rel = index_rows(sop_copy, 'test')[0][3]
    with open(os.path.join(sop_copy, 'Ebay_test.txt'), 'a') as f:
        f.write('99998 {} 1 {}\n'.format(train_class, test_rel))
    overlap = find_overlap(sop_copy)
    assert overlap.files == [(rel, copy)]
    assert [p[0] for p in overlap.products] == [int(train_class)]
    report = format_overlap(overlap, sop_copy)
    assert 'identical image files in both splits: 1' in report and copy in report
    assert 'products in both splits: 1' in report


@pytest.mark.parametrize('override, message', [
    ('split=val', "split must be one of train, test, both, not 'val'"),
    ('n=0', 'n must be at least 1'),
    ('strict=maybe', 'strict must be a bool'),
])
def test_bad_config_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_samples_config(SMOKE, [override])


def test_grid_titles_use_the_right_names_and_odd_files_get_a_tile(sop_copy, tmp_path):
    from distributed.data import sop
    rows = index_rows(sop_copy, 'train')
    # Every file the tiny tree's train split lists: RGBA, grayscale, broken, and ordinary.
    Image.new('RGBA', (40, 30), (9, 200, 9, 0)).save(os.path.join(sop_copy, rows[0][3]), 'PNG')
    Image.new('L', (40, 30), 80).save(os.path.join(sop_copy, rows[1][3]), 'JPEG')
    with open(os.path.join(sop_copy, rows[2][3]), 'wb') as f:
        f.write(b'\xff\xd8 truncated')
    dataset = sop.load_split(sop_copy, 'train')
    titles = sample_grid(dataset, len(dataset), 0, 'all', str(tmp_path / 'grid.png'))
    assert (tmp_path / 'grid.png').read_bytes()[:4] == b'\x89PNG'
    expected = sorted('{}:{}'.format(label, sop.SUPER_CLASS_NAMES[label]) + (
        ' (unreadable)' if path.endswith(rows[2][3]) else '') for path, label in dataset)
    assert sorted(titles) == expected
    names = ' '.join(titles)
    assert 'chair' in names and 'coffee_maker' in names and 'coffe_maker' not in names


def test_launcher_writes_grids_and_strict_fails_on_overlap(sop_copy, tmp_path):
    out = tmp_path / 'out'
    args = ['-c', SMOKE, 'data.root=' + sop_copy, 'out=' + str(out), 'n=7']
    done = run_launcher('launch.view_samples', args + ['strict=true'])
    assert done.returncode == 0, done.stderr
    for split in ('train', 'test'):
        png = out / 'samples_{}.png'.format(split)
        assert png.read_bytes()[:4] == b'\x89PNG'
    assert 'identical image files in both splits: 0' in done.stdout

    _, copy = plant_copied_image(sop_copy)
    lenient = run_launcher('launch.view_samples', args + ['split=test'])
    assert lenient.returncode == 0 and copy in lenient.stdout, lenient.stderr
    strict = run_launcher('launch.view_samples', args + ['split=test', 'strict=true'])
    assert strict.returncode == 1 and 'train and test overlap' in strict.stderr
    assert 'Traceback' not in strict.stderr


def test_launcher_names_a_missing_tree(tmp_path):
    done = run_launcher('launch.view_samples', ['-c', SMOKE, 'data.root=' + str(tmp_path)])
    assert done.returncode == 2 and 'has no Ebay_train.txt' in done.stderr
    assert 'Traceback' not in done.stderr
