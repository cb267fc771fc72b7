"""Classify image files: the top-k SOP super-classes with their probabilities.

``python -m launch.predict -c FILE model=PATH [top_k=5] [key=value ...] IMAGE [IMAGE ...]``
Images go through the evaluation transform (data.scale_size, data.crop_size of the config).
A file that is missing or not an image is named on stderr and the others are still
answered; the exit status is then 1.
"""
import argparse
import os
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
from distributed.config import ConfigError
from distributed.predict import Predictor, format_prediction, load_predict_config
from distributed.runtime import StartupError
from launch import cli

FAILED_IMAGES_EXIT = 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m launch.predict', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', help='YAML config (configs/); defaults otherwise')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config and exit')
    parser.add_argument('items', nargs='*', metavar='key=value | IMAGE',
                        help='config overrides (model=results/smoke/model.npz top_k=3), '
                             'then the image files')
    args = parser.parse_args(argv)
    # An override has '=' before any path separator; anything else is an image file.
    args.overrides = [a for a in args.items
                      if '=' in a.split('/')[0] and not os.path.isfile(a)]
    args.images = [a for a in args.items if a not in args.overrides]
    if not args.images and not args.print_config:
        parser.error('name at least one image file')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_predict_config(args.config, args.overrides)
        if args.print_config:
            cli.print_config(config)
            return 0
        predictor = Predictor(config)
    except (ConfigError, StartupError) as e:
        return cli.fail(e)
    failed = 0
    for path in args.images:
        prediction = predictor(path)
        if prediction.error:
            failed += 1
            print(format_prediction(prediction), file=sys.stderr)
        else:
            print(format_prediction(prediction))
    if failed:
        print('error: {} of {} images could not be classified'.format(
            failed, len(args.images)), file=sys.stderr)
        return FAILED_IMAGES_EXIT
    return 0


if __name__ == '__main__':
    sys.exit(main())
