"""Train ResNet on SOP super-classes: ``[mpiexec -n N] python -m launch.train -c FILE k=v``."""
import argparse
import sys

import distributed  # noqa: F401  (applies the compat shims before chainer is imported)
import yaml
from distributed.config import ConfigError, load_config, to_dict
from distributed.data import create_datasets, create_iterators
from distributed.data.sop import DataError
from distributed.model import create_model, mean_of
from distributed.optim import create_optimizer, create_schedule
from distributed.runtime import RuntimeError_, create_runtime
from distributed.trainer import create_trainer, summarize


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('-c', '--config', help='YAML config (configs/); defaults otherwise')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config and exit')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='config overrides, e.g. train.epochs=3 data.root=/data/SOP')
    return parser.parse_args(argv)


def train(config):
    runtime = create_runtime(config)
    model = create_model(config.model.arch, zero_gamma=config.model.zero_gamma)
    train_set, test_set = create_datasets(config, runtime, mean_of(model))
    model.to_device(runtime.device)
    train_iter, test_iter = create_iterators(config, train_set, test_set)
    iters_per_epoch = len(train_set) / config.train.batch_size
    schedule = create_schedule(config, runtime.size, iters_per_epoch)
    optimizer = create_optimizer(config, model, runtime.comm, schedule)
    trainer = create_trainer(config, runtime, model, optimizer, train_iter, test_iter, schedule)
    trainer.run()
    return runtime, summarize(trainer, runtime, config)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end='')
            return 0
        runtime, summary = train(config)
    except (ConfigError, DataError, RuntimeError_) as e:
        # Every rank meets the same error (config and data checks are collective); one
        # rank says it.
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            print('error: {}'.format(e), file=sys.stderr)
        return 2
    if runtime.is_root:
        print('test accuracy {test_accuracy:.3f} (loss {test_loss:.3f}) after {epochs:.1f} '
              'epochs, {seconds:.0f} s, {images_per_sec:.1f} images/s on {ranks} ranks; '
              'results in {out}'.format(**summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
