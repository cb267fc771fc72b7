"""Run under mpiexec by tests/distributed/data/test_stream.py: what a job's ranks compute, built as
``launch.train`` builds it, written by rank 0 as JSON.

``python stream_probe.py images OUT k=v...``: per global batch, the chunks (in chunk order,
over all ranks) as the SHA-1 of each decoded image and its label.
``python stream_probe.py step OUT k=v...``: after one update, the loss, the gradients
(averaged over ranks) and the BatchNorm running statistics (averaged over ranks).
"""
import hashlib
import json
import sys

import distributed  # noqa: F401
import chainer
import numpy

from distributed.across_ranks import mean_batchnorm_statistics
from distributed.checkpoint.resume import synchronize_weights, run_chunks
from distributed.model import seed_random_state
from distributed.config import load_config
from distributed.data import create_datasets, create_iterators
from distributed.model import create_model
from distributed.optim import create_optimizer, create_schedule
from distributed.comm import loss_function
from distributed.data.converter import InputConverter
from distributed.runtime import create_runtime
from distributed.model import batchnorm_statistics
from distributed.updater import ChunkUpdater

GLOBAL_BATCHES = 4


def images(config, runtime, chunks):
    train, test = create_datasets(config, runtime, chunks)
    iterator, test_iter = create_iterators(config, train, test, runtime, chunks)
    batches = []
    try:
        for _ in range(GLOBAL_BATCHES):
            mine = [[hashlib.sha1(img.tobytes()).hexdigest()[:12] + ':' + str(int(label))
                     for img, label in chunk] for chunk in iterator.next()]
            ranks = runtime.comm.mpi_comm.gather((mine, iterator.epoch_detail))
            if runtime.is_root:
                assert len({detail for _, detail in ranks}) == 1, ranks
                batches.append([chunk for rank, _ in ranks for chunk in rank])
    finally:
        iterator.finalize()
        test_iter.finalize()
    return batches


def step(config, runtime, chunks):
    seed_random_state(config.train.seed)
    model = create_model(config.model.arch, zero_gamma=False)
    train, test = create_datasets(config, runtime, chunks)
    iterator, test_iter = create_iterators(config, train, test, runtime, chunks)
    schedule = create_schedule(config, chunks, 10)
    optimizer = create_optimizer(config, model, runtime.comm, schedule)
    synchronize_weights(optimizer, runtime.comm)
    updater = ChunkUpdater(iterator, optimizer, InputConverter(model.predictor.mean),
                           runtime.device, loss_function(runtime.comm, model))
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation):
        updater.update()
    loss = runtime.comm.mpi_comm.allreduce(float(observation['main/loss'])) / runtime.size
    mean_batchnorm_statistics(model, runtime.comm)
    iterator.finalize()
    grads = {name: param.grad for name, param in sorted(model.namedparams())}
    stats = {str(i): array for i, array in enumerate(batchnorm_statistics(model))}
    return {'loss': loss,
            'grads': {k: numpy.asarray(v).ravel()[:64].tolist() for k, v in grads.items()},
            'grad_norms': {k: float(numpy.linalg.norm(v)) for k, v in grads.items()},
            'stats': {k: numpy.asarray(v).ravel()[:32].tolist() for k, v in stats.items()}}


def main():
    what, out = sys.argv[1], sys.argv[2]
    config = load_config(None, sys.argv[3:])
    runtime = create_runtime(config)
    chunks = run_chunks(config, runtime.comm, runtime.is_root)
    result = {'images': images, 'step': step}[what](config, runtime, chunks)
    runtime.watchdog.stop()
    if runtime.is_root:
        with open(out, 'w') as f:
            json.dump(result, f)


if __name__ == '__main__':
    main()
