"""Show the dataset: sample grids per split, and check that train and test do not overlap.

``python -m launch.view_samples -c FILE [split=train|test|both] [n=10] [strict=true]``
writes ``out/samples_train.png`` and ``out/samples_test.png`` (random images titled
``id:name``) and reports products and identical image files found in both splits; with
``strict=true`` an overlap makes the exit status non-zero.
"""
import argparse
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
import yaml
from distributed.config import ConfigError, to_dict
from distributed.data.sop import DataError
from distributed.samples import load_samples_config, view_samples

OVERLAP_EXIT = 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m launch.view_samples', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', help='YAML config (configs/); defaults otherwise')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config and exit')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='config overrides, e.g. split=test n=20 strict=true')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_samples_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end='')
            return 0
        written, overlap, report = view_samples(config)
    except (ConfigError, DataError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 2
    for path in written:
        print('wrote {}'.format(path))
    print(report)
    if overlap.found and config.strict:
        print('error: train and test overlap (strict=true); fix the index files so that no '
              'product or image is in both splits', file=sys.stderr)
        return OVERLAP_EXIT
    return 0


if __name__ == '__main__':
    sys.exit(main())
