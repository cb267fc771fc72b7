"""Show the dataset: sample grids per split, and check that train and test do not overlap.

``python -m launch.view_samples -c FILE [split=train|test|both] [n=10] [strict=true]``
writes ``out/samples_train.png`` and ``out/samples_test.png`` (random images titled
``id:name``) and reports products and identical image files found in both splits; with
``strict=true`` an overlap makes the exit status non-zero.
"""
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
from distributed.config import ConfigError
from distributed.data.sop import DataError
from distributed.samples import load_samples_config, view_samples
from launch import cli

OVERLAP_EXIT = 1


def main(argv=None):
    args = cli.parse_args(argv, __doc__, 'split=test n=20 strict=true')
    try:
        config = load_samples_config(args.config, args.overrides)
        if args.print_config:
            cli.print_config(config)
            return 0
        written, overlap, report = view_samples(config)
    except (ConfigError, DataError) as e:
        return cli.fail(e)
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
