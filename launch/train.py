"""Train ResNet on SOP super-classes: ``[mpiexec -n N] python -m launch.train -c FILE k=v``.

Exit codes: 0 done; 2 bad config, data or checkpoint (rank 0 says so); 3 an image that
cannot be decoded with data.on_bad_image=error (the job is aborted); 4 a rank made no
progress for train.stall_timeout seconds (it prints its stacks); 128 + signal number
(143 SIGTERM, 130 SIGINT) stopped by a signal after writing a checkpoint.
"""
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
from distributed.checkpoint.files import CheckpointError
from distributed.checkpoint.resume import resume, run_chunks
from distributed.config import ConfigError, load_config
from distributed.data import create_datasets, create_iterators
from distributed.data.sop import DataError
from distributed.liveness import StopSignal
from distributed.model import create_model, seed_random_state
from distributed.optim import create_optimizer, create_schedule
from distributed.reports import describe
from distributed.runtime import StartupError, create_runtime, describe_ranks, describe_runtime
from distributed.trainer import create_trainer, run
from launch import cli


def train(config, stop_signal):
    runtime = create_runtime(config)
    where = describe_ranks(runtime)
    if runtime.is_root:
        print(describe_runtime(runtime), where, sep='\n', flush=True)
    chunks = run_chunks(config, runtime.comm, runtime.is_root)
    if runtime.is_root and runtime.size > chunks:
        print(f'train.split_chunks: {runtime.size} ranks split each of the {chunks} chunks in '
              f'{runtime.size // chunks} parts of '
              f'{config.train.batch_size * chunks // runtime.size} images; BatchNorm '
              f'normalises the parts, so this run follows a {chunks}-rank one to a tolerance '
              'only', flush=True)
    seed_random_state(config.train.seed)  # reproducible weights (rank 0's are broadcast)
    model = create_model(config.model.arch, zero_gamma=config.model.zero_gamma)
    train_set, test_set = create_datasets(config, runtime, chunks)
    model.to_device(runtime.device)
    iterators = create_iterators(config, train_set, test_set, runtime, chunks)
    iters_per_epoch = train_set.images / iterators[0].global_batch
    # The recipe of C workers, whatever the rank count: lr, warm-up start.
    schedule = create_schedule(config, chunks, iters_per_epoch)
    optimizer = create_optimizer(config, model, runtime.comm, schedule)
    trainer = create_trainer(config, runtime, model, optimizer, iterators, schedule,
                             stop_signal)
    resume(trainer, config, runtime)  # from the checkpoint config.resume names, if any
    return runtime, run(trainer, config, runtime, (train_set, test_set))


def main(argv=None):
    args = cli.parse_args(argv, __doc__, 'train.epochs=3 data.root=/data/SOP')
    # From the start (a signal during start-up stops the job after its first iteration) to
    # the exit (one after the last iteration changes nothing: the run is complete).
    stop_signal = StopSignal()
    stop_signal.install()
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            cli.print_config(config)
            return 0
        runtime, summary = train(config, stop_signal)
    except (ConfigError, DataError, StartupError, CheckpointError) as e:
        return cli.fail(e)
    if runtime.is_root:
        print(describe(summary), file=sys.stderr if summary['stopped_by'] else sys.stdout)
    return 128 + summary['stopped_by'] if summary['stopped_by'] else 0


if __name__ == '__main__':
    sys.exit(main())
