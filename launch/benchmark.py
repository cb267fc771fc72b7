"""Throughput benchmark: ``[mpiexec -n N] python -m launch.benchmark [-c FILE] [key=value]``.

Keys (distributed.bench.BenchConfig): crop_size, batch_size, iterations, warmup, arch,
communicator, allreduce_dtype, allreduce_rounds, pipeline_images, pipeline_rounds,
pipeline_crop, device, seed, out. Rank 0 prints a table and writes out/benchmark.json.
"""
import argparse
import json
import os
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
from distributed.bench import format_table, load_bench_config, run_benchmark, training_config
from distributed.config import ConfigError
from distributed.runtime import RuntimeError_, create_runtime


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', help='YAML file of benchmark keys')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='e.g. crop_size=64 batch_size=16 iterations=10')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_bench_config(args.config, args.overrides)
        runtime = create_runtime(training_config(config))
        result = run_benchmark(config, runtime)
    except (ConfigError, RuntimeError_) as e:
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            print('error: {}'.format(e), file=sys.stderr)
        return 2
    if runtime.is_root:
        os.makedirs(config.out, exist_ok=True)
        path = os.path.join(config.out, 'benchmark.json')
        with open(path, 'w') as f:
            json.dump(result, f, indent=1)
        print(format_table(result))
        print('written to {}'.format(path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
