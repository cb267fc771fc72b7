"""Throughput benchmark: ``[mpiexec -n N] python -m launch.benchmark [-c FILE] [key=value]``.

Keys (distributed.bench.config.BenchConfig; docs/configuration.md): crop_size, batch_size,
iterations, warmup, arch, dtype, communicator, allreduce_dtype, allreduce_rounds,
pipeline_images, pipeline_rounds, pipeline_crop, device, seed, out. Rank 0 prints a table
and writes out/benchmark.json.
"""
import json
import os
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
from distributed.bench.config import load_bench_config, training_config
from distributed.bench.report import format_table
from distributed.bench.run import run_benchmark
from distributed.config import ConfigError
from distributed.runtime import StartupError, create_runtime
from launch import cli


def main(argv=None):
    args = cli.parse_args(argv, __doc__, 'crop_size=64 batch_size=16 iterations=10')
    try:
        config = load_bench_config(args.config, args.overrides)
        if args.print_config:
            cli.print_config(config)
            return 0
        runtime = create_runtime(training_config(config))
        result = run_benchmark(config, runtime, progress=(
            lambda text: print('benchmark: ' + text, file=sys.stderr, flush=True))
            if runtime.is_root else None)
    except (ConfigError, StartupError) as e:
        return cli.fail(e)
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
