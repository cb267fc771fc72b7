"""What the launchers share: the ``-c FILE [--print-config] key=value ...`` command line
and the one-message exit on bad input."""
import argparse
import os
import sys

import yaml

from distributed.config import to_dict

BAD_INPUT = 2


def parse_args(argv, doc, example):
    """``-c/--config``, ``--print-config`` and the ``key=value`` overrides."""
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    parser = argparse.ArgumentParser(prog='python -m launch.' + name, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', help='YAML config (configs/); defaults otherwise')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config and exit')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='config overrides, e.g. ' + example)
    return parser.parse_args(argv)


def print_config(config):
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end='')


def fail(error):
    """Say ``error`` once and return the bad-input exit code.

    Config, data and device checks are collective, so every rank meets the same error;
    rank 0 alone says it.
    """
    from mpi4py import MPI
    if MPI.COMM_WORLD.rank == 0:
        print('error: {}'.format(error), file=sys.stderr)
    return BAD_INPUT
