"""The training step measured: ResNet steps on synthetic in-memory data through the
product's runtime, multi-node optimizer and communicator, each step split into data wait,
forward, backward, waiting for the slowest rank, gradient allreduce and update."""
import time

import chainer
import numpy

from distributed.bench.config import training_config


def synchronizer(device):
    if isinstance(device, chainer.backend.GpuDevice):
        return device.device.synchronize
    return lambda: None


class _TimedComm:
    """The communicator, with the time spent in ``multi_node_mean_grad`` added up.

    A barrier first separates the two things a rank's allreduce call would otherwise lump
    together: waiting for the slower ranks to finish their backward (``wait_seconds``, a
    cost of compute imbalance that synchronous SGD pays whatever the network) and the
    communication itself (``seconds``).
    """

    def __init__(self, comm, sync):
        self._comm = comm
        self._sync = sync
        self.seconds = self.wait_seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def multi_node_mean_grad(self, model, zero_fill=False):
        self._sync()
        arrived = time.perf_counter()
        self._comm.mpi_comm.Barrier()
        start = time.perf_counter()
        self._comm.multi_node_mean_grad(model, zero_fill)
        self._sync()
        self.wait_seconds += start - arrived
        self.seconds += time.perf_counter() - start


def measure_training(config, runtime, model):
    """Mean seconds per iteration of each part of a training step on this rank."""
    from distributed.comm import loss_function
    from distributed.model import mean_of
    from distributed.optim import create_optimizer
    from distributed.data.converter import InputConverter
    sync = synchronizer(runtime.device)
    rng = numpy.random.RandomState(config.seed + runtime.rank)
    # uint8 images, as the transforms make them; the converter normalises them on the
    # device, so its cost is in the 'data' part.
    pool = [(rng.randint(0, 256, (3, config.crop_size, config.crop_size)).astype(numpy.uint8),
             numpy.int32(rng.randint(12))) for _ in range(2 * config.batch_size)]
    iterator = chainer.iterators.SerialIterator(pool, config.batch_size)
    converter = InputConverter(mean_of(model))
    comm = _TimedComm(runtime.comm, sync)
    optimizer = create_optimizer(training_config(config), model, comm, lambda iteration: 0.1)
    actual = optimizer.actual_optimizer
    times = {'forward': 0.0, 'update': 0.0}

    def timed(part, function):
        def call(*args, **kwargs):
            sync()
            start = time.perf_counter()
            result = function(*args, **kwargs)
            sync()
            times[part] += time.perf_counter() - start
            return result
        return call

    # The plain optimizer's update is what the multi-node optimizer calls after the
    # allreduce; shadowing it on this instance times it without changing it.
    actual.update = timed('update', actual.update)
    lossfun = timed('forward', loss_function(comm, model))
    rows = []
    for i in range(config.warmup + config.iterations):
        comm.seconds = comm.wait_seconds = times['forward'] = times['update'] = 0.0
        start = time.perf_counter()
        x, t = converter(iterator.next(), runtime.device)
        sync()
        fetched = time.perf_counter()
        optimizer.update(lossfun, x, t)
        sync()
        end = time.perf_counter()
        runtime.watchdog.progress(f'benchmark iteration {i + 1}')
        if i >= config.warmup:
            rest = end - fetched
            rows.append({
                'data': fetched - start, 'forward': times['forward'],
                'backward': (rest - times['forward'] - times['update'] - comm.seconds
                             - comm.wait_seconds),
                'wait': comm.wait_seconds, 'allreduce': comm.seconds,
                'update': times['update'], 'step': end - start})
    del actual.update
    return {key: float(numpy.mean([row[key] for row in rows])) for key in rows[0]}
