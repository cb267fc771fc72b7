"""The gradient allreduce measured: the product's ``multi_node_mean_grad`` of the model's
real gradients against raw mpi4py ``Allreduce`` of the same bytes (one flat buffer, and one
call per array) and against ChainerMN's stock ``naive`` communicator, rounds interleaved."""
import time

import chainer
import numpy

from distributed.bench.step import synchronizer


def _rounds(mpi_comm, patterns, rounds):
    """Median over ``rounds`` of each pattern's slowest-rank time; patterns interleave."""
    from mpi4py import MPI
    samples = {name: [] for name in patterns}
    for _ in range(rounds):
        for name, function in patterns.items():
            mpi_comm.Barrier()
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    result = {}
    for name, values in samples.items():
        slowest = numpy.array(values, numpy.float64)
        mpi_comm.Allreduce(MPI.IN_PLACE, slowest, op=MPI.MAX)
        result[name] = float(numpy.median(slowest))
    return result


def measure_allreduce(config, runtime, model):
    """Seconds per gradient allreduce: the product's, stock naive's, and raw MPI's."""
    from mpi4py import MPI
    import chainermn
    mpi_comm = runtime.comm.mpi_comm
    sync = synchronizer(runtime.device)
    grads = [chainer.backend.CpuDevice().send(param.grad)
             for _, param in sorted(model.namedparams()) if param.grad is not None]
    flat = numpy.concatenate([g.ravel() for g in grads])

    predivides = hasattr(runtime.comm, 'predivided')

    # On the CPU, ``grads`` are the model's own arrays (not copies).
    params = ([param for _, param in sorted(model.namedparams()) if param.grad is not None]
              if runtime.device.xp is numpy else [])

    def product():
        # Each round reduces the gradients as a backward leaves them (arrays of their own:
        # a packed reduction leaves views of its buffer, which the updater clears).
        for param, grad in zip(params, grads):
            param.grad = grad
        if predivides:
            # As in training, whose loss was divided by the ranks (comm.loss_function).
            runtime.comm.grads_predivided = True
        runtime.comm.multi_node_mean_grad(model)
        sync()

    def raw_flat():
        mpi_comm.Allreduce(MPI.IN_PLACE, flat)

    def raw_arrays():
        for grad in grads:
            mpi_comm.Allreduce(MPI.IN_PLACE, grad)

    patterns = {'product': product, 'raw_flat': raw_flat, 'raw_arrays': raw_arrays}
    layout = getattr(runtime.comm, 'packed', None)
    if layout is not None:
        # The product's other layout (packed into one buffer, or one call per array).
        from distributed.comm import InPlaceMeanGrad
        other = InPlaceMeanGrad(chainermn.create_communicator('naive', mpi_comm=mpi_comm),
                                packed=not layout)

        def product_other():
            for param, grad in zip(params, grads):
                param.grad = grad
            other.grads_predivided = True
            other.multi_node_mean_grad(model)
        patterns['other_layout'] = product_other
    naive = None
    if runtime.device.xp is numpy and type(runtime.comm).__name__ != 'NaiveCommunicator':
        naive = chainermn.create_communicator('naive', mpi_comm=mpi_comm)
        patterns['naive'] = lambda: naive.multi_node_mean_grad(model)
    if config.allreduce_dtype == 'float32' and runtime.device.xp is not numpy:
        try:
            half = chainermn.create_communicator('pure_nccl', mpi_comm=mpi_comm,
                                                 allreduce_grad_dtype='float16')
            patterns['fp16'] = lambda: (half.multi_node_mean_grad(model), sync())
        except Exception:
            pass
    times = _rounds(mpi_comm, patterns, config.allreduce_rounds)
    raw = min(times['raw_flat'], times['raw_arrays'])
    return {
        'allreduce_s': times['product'],
        'allreduce_raw_s': raw,
        'allreduce_raw_flat_s': times['raw_flat'],
        'allreduce_raw_arrays_s': times['raw_arrays'],
        'allreduce_naive_s': times.get('naive'),
        'allreduce_fp16_s': times.get('fp16'),
        'allreduce_ratio': times['product'] / raw if raw else 1.0,
        'allreduce_naive_ratio': times['naive'] / raw if raw and 'naive' in times else None,
        'allreduce_layout': None if layout is None else ('packed' if layout else 'per-array'),
        'allreduce_other_layout_s': times.get('other_layout'),
        'allreduce_bytes': int(flat.nbytes),
        'allreduce_arrays': len(grads),
    }
