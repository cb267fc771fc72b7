"""Test a trained model on an SOP split: top-1, top-5, per-super-class accuracy, confusion.

``[mpiexec -n N] python -m launch.evaluate -c FILE model=PATH [split=train] [key=value ...]``
Any number of ranks gives exactly the numbers of one process. Rank 0 prints the table and
writes ``out/eval.json`` and ``out/confusion.png``.
"""
import argparse
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
import yaml
from distributed.config import ConfigError, to_dict
from distributed.data.sop import DataError
from distributed.evaluate import evaluate, format_report, load_eval_config
from distributed.runtime import RuntimeError_, create_runtime


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m launch.evaluate', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', help='YAML config (configs/); defaults otherwise')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config and exit')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='config overrides, e.g. model=results/smoke/model.npz split=train')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_eval_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end='')
            return 0
        runtime = create_runtime(config)
        result = evaluate(config, runtime)
    except (ConfigError, DataError, RuntimeError_) as e:
        # Config, weights and data checks are collective: every rank meets the same error.
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            print('error: {}'.format(e), file=sys.stderr)
        return 2
    if runtime.is_root:
        print(format_report(result, config.split))
        print('on {} ranks; wrote {}/eval.json and {}/confusion.png'.format(
            runtime.size, config.out, config.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
