"""Gradient communication: the CPU communicator and a factory over ChainerMN's.

ChainerMN's ``naive`` communicator averages each gradient with an in-place MPI Allreduce,
but every step it re-walks and sorts the model's parameters and scales each array in a
separate pass. ``InPlaceMeanGrad`` wraps a ChainerMN communicator (every other call goes
to it unchanged) and replaces only ``multi_node_mean_grad``: the parameter order is
computed once per model, each gradient is reduced in place with ``MPI.IN_PLACE`` (no send
buffer, no copy) and divided by the number of ranks right after its own reduction, while
it is still in cache. ChainerMN's multi-node optimizer drives it as it drives any
communicator.
"""
import weakref

import chainermn
import numpy

INPLACE = 'inplace'
"""The communicator name (``comm.communicator``) of ``InPlaceMeanGrad`` over ``naive``."""


class InPlaceMeanGrad:
    """A ChainerMN communicator whose gradient mean is one in-place Allreduce per array."""

    def __init__(self, comm):
        self._comm = comm
        self._model = None
        self._params = []

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def _ordered_params(self, model):
        # Every rank must reduce the arrays in the same order: sorted by name, as ChainerMN
        # does, but sorted once per model rather than once per step.
        if self._model is None or self._model() is not model:
            self._params = [param for _, param in sorted(model.namedparams())]
            self._model = weakref.ref(model)
        return self._params

    def multi_node_mean_grad(self, model, zero_fill=False):
        from mpi4py import MPI
        mpi_comm = self._comm.mpi_comm
        # The mean over one rank is its own gradient: no reduction, no scaling pass.
        alone = mpi_comm.size == 1
        scale = 1.0 / mpi_comm.size
        for param in self._ordered_params(model):
            if param.array is None:
                continue
            grad = param.grad
            if grad is None:
                if not zero_fill:
                    continue
                grad = param.grad = param.xp.zeros_like(param.array)
            if alone:
                continue
            if not isinstance(grad, numpy.ndarray) or not grad.flags.c_contiguous:
                # GPU or strided arrays: ChainerMN's own path handles them.
                self._comm._multi_node_mean(None, grad)
                continue
            mpi_comm.Allreduce(MPI.IN_PLACE, grad)
            grad *= scale

    def allreduce_grad(self, model, zero_fill=False):
        self.multi_node_mean_grad(model, zero_fill)


def create_communicator(name, **kwargs):
    """A ChainerMN communicator by name; ``inplace`` is ``InPlaceMeanGrad`` over ``naive``.

    Raises ValueError (ChainerMN's) for names or options the communicator does not take.
    """
    if name == INPLACE:
        if kwargs.get('allreduce_grad_dtype') not in (None, 'float32', numpy.float32):
            # MPI has no portable float16 sum; converting on the CPU would add two passes
            # over the gradients and save nothing on shared memory.
            raise ValueError('allreduce_grad_dtype={} needs the pure_nccl communicator on '
                             'GPUs; on the CPU use comm.allreduce_dtype=float32'.format(
                                 kwargs['allreduce_grad_dtype']))
        return InPlaceMeanGrad(chainermn.create_communicator('naive'))
    return chainermn.create_communicator(name, **kwargs)
