"""Every measurement of ``launch.benchmark``, each next to its baseline from the same run:
the training step (``step``), the gradient allreduce (``allreduce``) and the input
pipeline (``pipeline``); ``report`` formats the result.
"""
import dataclasses
import os
import platform

import chainer

from distributed.bench.allreduce import measure_allreduce
from distributed.bench.pipeline import measure_pipeline
from distributed.bench.step import measure_training


def _mpi_library():
    from mpi4py import MPI
    return MPI.Get_library_version().strip().splitlines()[0]


def run_benchmark(config, runtime, progress=None):
    """Every measurement, on every rank; the returned dict is the same on all ranks.

    ``progress(text)``, when given, is told as each measurement starts.
    """
    from mpi4py import MPI
    from distributed.model import create_model
    say = progress or (lambda text: None)
    model = create_model(config.arch)
    mean = chainer.backend.CpuDevice().send(model.predictor.mean)
    model.to_device(runtime.device)
    mpi_comm = runtime.comm.mpi_comm
    say('training: {} + {} iterations of {} x {} px'.format(
        config.warmup, config.iterations, config.batch_size, config.crop_size))
    parts = measure_training(config, runtime, model)
    slowest = {key: mpi_comm.allreduce(value, op=MPI.MAX) for key, value in parts.items()}
    total = mpi_comm.allreduce(config.batch_size / parts['step'])
    result = {
        'ranks': runtime.size,
        'images_per_sec': total,
        'images_per_sec_per_rank': total / runtime.size,
        'step_s': slowest['step'],
        'parts_s': slowest,
        'exposed_comm_share': slowest['allreduce'] / slowest['step'],
        'wait_share': slowest['wait'] / slowest['step'],
        'communicator': type(runtime.comm).__name__,
    }
    say(f'gradient allreduce: {config.allreduce_rounds} rounds of each pattern')
    result.update(measure_allreduce(config, runtime, model))
    runtime.watchdog.progress('the allreduce measurement')
    if config.pipeline_images:
        say('input pipeline: {} JPEGs, {} rounds of each path'.format(
            config.pipeline_images, config.pipeline_rounds))
        result.update(measure_pipeline(config, runtime, mean))
    runtime.watchdog.stop()
    result.update({
        'machine': {'host': platform.node(), 'cpus': os.cpu_count(),
                    'processor': platform.processor() or platform.machine(),
                    'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
                    'mpi': _mpi_library(), 'device': str(runtime.device)},
        'config': dataclasses.asdict(config),
    })
    return result
