"""Write a minisop tree (the embedded default dataset, in SOP layout) into DIR."""
import argparse
import os
import sys

import distributed  # noqa: F401  (applies the NumPy-2 shims before anything else)
from distributed.data import minisop
from distributed.data.sop import INDEX_FILES


def main(argv=None):
    d = minisop.DEFAULTS
    p = argparse.ArgumentParser(prog='python -m launch.make_minisop', description=__doc__)
    p.add_argument('dir', help='folder to hold Ebay_*.txt and the <super_class>_final folders')
    p.add_argument('--products-per-class', type=int, default=d['products_per_class'])
    p.add_argument('--images-per-product', type=int, nargs=2, metavar=('MIN', 'MAX'),
                   default=d['images_per_product'])
    p.add_argument('--size-range', type=int, nargs=2, metavar=('MIN', 'MAX'),
                   default=d['size_range'], help='side length in pixels')
    p.add_argument('--grayscale-fraction', type=float, default=d['grayscale_fraction'])
    p.add_argument('--seed', type=int, default=d['seed'])
    p.add_argument('--force', action='store_true',
                   help='replace DIR even if it holds other files')
    a = p.parse_args(argv)
    try:
        root = minisop.make_minisop(
            a.dir, products_per_class=a.products_per_class,
            images_per_product=a.images_per_product, size_range=a.size_range,
            grayscale_fraction=a.grayscale_fraction, seed=a.seed, overwrite=a.force)
    except (ValueError, OSError) as e:
        sys.exit('error: {}'.format(e))
    counts = {}
    for split in ('train', 'test'):
        with open(os.path.join(root, INDEX_FILES[split])) as f:
            counts[split] = sum(1 for _ in f) - 1
    print('minisop: {} train + {} test images in {}'.format(
        counts['train'], counts['test'], root))


if __name__ == '__main__':
    main()
