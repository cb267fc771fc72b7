"""Gradient communication: the CPU communicator and a factory over ChainerMN's.

ChainerMN's ``naive`` communicator averages each gradient with an in-place MPI Allreduce,
but every step it re-walks and sorts the model's parameters and then scales each array in
a separate pass over the gradients (94 MB for ResNet-50). ``InPlaceMeanGrad`` wraps a
ChainerMN communicator (every other call goes to it unchanged) and replaces only
``multi_node_mean_grad``: the parameter order is computed once per model and each gradient
is reduced in place with ``MPI.IN_PLACE`` (no send buffer, no copy). The division by the
number of ranks is moved out of the reduction: ``predivided`` divides the loss instead, one
scalar at the head of backward, so the gradients arrive already divided and their sum over
ranks is the mean. ChainerMN's multi-node optimizer drives it as it drives any
communicator.
"""
import weakref

import chainermn
import numpy

from distributed import compat

INPLACE = 'inplace'
"""The communicator name (``comm.communicator``) of ``InPlaceMeanGrad`` over ``naive``."""


class InPlaceMeanGrad:
    """A CPU ChainerMN communicator whose gradient mean is one in-place Allreduce per array.

    ``grads_predivided`` says whether the gradients now held were computed from a loss
    divided by the number of ranks (``predivided`` sets it; a reduction or a broadcast
    clears it): the reduction then only sums. Without it, each array is also scaled after
    its reduction, so the result is the mean either way.
    """

    def __init__(self, comm):
        self._comm = comm
        self._model = None
        self._params = []
        self.grads_predivided = False

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def predivided(self, lossfun):
        """``lossfun`` whose loss is divided by the number of ranks (unchanged at one rank).

        Call it where a multi-node optimizer calls its loss function: backward then leaves
        gradients that need only be summed across ranks. The division comes after
        ``lossfun`` has reported its loss, so logs still show the loss itself.
        """
        size = self._comm.size
        if size == 1:
            return lossfun

        def loss(*args, **kwargs):
            value = lossfun(*args, **kwargs)
            self.grads_predivided = True
            return value / size
        return loss

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
        scale = None if self.grads_predivided else 1.0 / mpi_comm.size
        self.grads_predivided = False
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
            if not isinstance(grad, numpy.ndarray):
                raise TypeError('comm.communicator={} reduces NumPy arrays on the CPU; for '
                                'GPU arrays use comm.communicator=auto'.format(INPLACE))
            buffer = grad if grad.flags.c_contiguous else numpy.ascontiguousarray(grad)
            mpi_comm.Allreduce(MPI.IN_PLACE, buffer)
            if scale is not None:
                buffer *= scale
            if buffer is not grad:
                grad[...] = buffer

    def allreduce_grad(self, model, zero_fill=False):
        # chainermn's older name for the same step; forwarded to the wrapped communicator,
        # it would scale pre-divided gradients a second time.
        self.multi_node_mean_grad(model, zero_fill)

    def bcast_data(self, model):
        # ChainerMN's first update broadcasts the weights instead of reducing the gradients
        # it just computed: the mark of those gradients goes with them.
        self.grads_predivided = False
        self._comm.bcast_data(model)


def loss_function(comm, model):
    """What the updater should call for the loss: ``model`` itself, or, with a communicator
    that can skip its scaling pass (``InPlaceMeanGrad``), ``model`` pre-divided."""
    predivided = getattr(comm, 'predivided', None)
    return predivided(model) if predivided else model


def create_communicator(name, **kwargs):
    """A ChainerMN communicator by name; ``inplace`` is ``InPlaceMeanGrad`` over ``naive``.

    Raises ValueError (ChainerMN's) for names or options the communicator does not take.
    """
    compat.chainermn_unpack_params()
    if name == INPLACE:
        if kwargs.get('allreduce_grad_dtype') not in (None, 'float32', numpy.float32):
            # MPI has no portable float16 sum; converting on the CPU would add two passes
            # over the gradients and save nothing on shared memory.
            raise ValueError('allreduce_grad_dtype={} needs the pure_nccl communicator on '
                             'GPUs; on the CPU use comm.allreduce_dtype=float32'.format(
                                 kwargs['allreduce_grad_dtype']))
        return InPlaceMeanGrad(chainermn.create_communicator('naive'))
    return chainermn.create_communicator(name, **kwargs)
