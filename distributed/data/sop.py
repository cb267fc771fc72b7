"""The Stanford Online Products (SOP) format: label names, index files, validation."""
import os

import chainer

# The 12 super-classes in SOP order (super_class_id 1..12). chainercv's
# online_products_super_label_names misspells two of them ('chainer', 'coffe_maker').
SUPER_CLASS_NAMES = (
    'bicycle', 'cabinet', 'chair', 'coffee_maker', 'fan', 'kettle',
    'lamp', 'mug', 'sofa', 'stapler', 'table', 'toaster',
)

INDEX_FILES = {'train': 'Ebay_train.txt', 'test': 'Ebay_test.txt', 'all': 'Ebay_info.txt'}
INDEX_HEADER = 'image_id class_id super_class_id path'

GET_SOP = ('Stanford Online Products (2.9 GB) comes from '
           'https://cvgl.stanford.edu/projects/lifted_struct/ '
           '(ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip); unzip it and set '
           'data.root=/path/to/Stanford_Online_Products, or use data.root=minisop for the '
           'small generated stand-in')


class DataError(ValueError):
    """The dataset cannot be used as configured; the message says what to do."""


def resolve_root(root):
    """The SOP folder for the ``data.root`` setting ('minisop' is generated once, cached)."""
    if root == 'minisop':
        from distributed.data.minisop import ensure_minisop
        return ensure_minisop()
    return os.path.abspath(os.path.expanduser(root))


def read_index(root, split):
    """``[(class_id, super_class_id, path)]`` of an index file (ids 0-based)."""
    path = os.path.join(root, INDEX_FILES[split])
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split() != INDEX_HEADER.split():
        raise DataError('{} does not start with the SOP header line {!r}; is this an SOP '
                        'index file?'.format(path, INDEX_HEADER))
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            _, class_id, super_id, rel = fields
            rows.append((int(class_id) - 1, int(super_id) - 1, rel))
        except ValueError:
            raise DataError('{} line {}: expected "image_id class_id super_class_id path", '
                            'got {!r}'.format(path, number, line))
        if not 0 <= rows[-1][1] < len(SUPER_CLASS_NAMES):
            raise DataError('{} line {}: super_class_id {} is outside 1..{}'.format(
                path, number, super_id, len(SUPER_CLASS_NAMES)))
    return rows


def check_tree(root):
    """An error message for an unusable SOP tree at ``root``, or None when it is fine."""
    if not os.path.isdir(root):
        return 'data.root {} does not exist. {}.'.format(root, GET_SOP)
    for split in ('train', 'test'):
        index = os.path.join(root, INDEX_FILES[split])
        if not os.path.isfile(index):
            nested = os.path.join(root, 'Stanford_Online_Products', INDEX_FILES[split])
            hint = (' It is in {}: point data.root there.'.format(os.path.dirname(nested))
                    if os.path.isfile(nested) else ' ' + GET_SOP + '.')
            return 'data.root {} has no {}, so it is not an SOP tree.{}'.format(
                root, INDEX_FILES[split], hint)
    try:
        missing = [rel for split in ('train', 'test') for _, _, rel in read_index(root, split)
                   if not os.path.isfile(os.path.join(root, rel))]
    except DataError as e:
        return str(e)
    if missing:
        return ('{} images listed in the index files of {} are missing, e.g. {}. Restore '
                'them (unzip SOP again) or fix the index files.'.format(
                    len(missing), root, ', '.join(missing[:10])))
    return None


def load_split(root, split):
    """chainercv's ``OnlineProductsDataset`` as (image file path, super_label) pairs: the
    transforms decode only what they need (``safe_images``, ``fastimage``)."""
    from chainercv.datasets import OnlineProductsDataset
    dataset = OnlineProductsDataset(root, split=split)
    return chainer.datasets.TupleDataset(dataset.paths, dataset.super_class_ids)
