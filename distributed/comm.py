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
import functools
import weakref

import chainermn
import numpy

from distributed import compat

INPLACE = 'inplace'
"""The communicator name (``comm.communicator``) of ``InPlaceMeanGrad`` over ``naive``."""


def spans_nodes(mpi_comm):
    """Whether the ranks of ``mpi_comm`` run on more than one node (collective: every rank
    calls it; every rank gets the same answer)."""
    from mpi4py import MPI
    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.size < mpi_comm.size
    finally:
        node.Free()


class InPlaceMeanGrad:
    """A CPU ChainerMN communicator whose gradient mean is in-place MPI Allreduce: one per
    array, or one of a single flat buffer that packs them all (``packed``).

    ``packed`` (None: decided here, by ``spans_nodes``): on one node the ranks share
    memory and one Allreduce per array is the fastest (no copies); between nodes over TCP
    one large message is faster than 161 small ones even with the two copies of the
    gradients (docs: BENCHMARKS.md, "Across two hosts"). Every rank must take the same
    choice (the calls must match).

    ``grads_predivided`` says whether the gradients now held were computed from a loss
    divided by the number of ranks (``predivided`` sets it; a reduction or a broadcast
    clears it): the reduction then only sums. Without it, each array is also scaled after
    its reduction, so the result is the mean either way.
    """

    def __init__(self, comm, packed=None):
        self._comm = comm
        self._model = None
        self._params = []
        self._buffer = None
        self.grads_predivided = False
        self.packed = spans_nodes(comm.mpi_comm) if packed is None else bool(packed)

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
        grads = []
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
            grads.append((param, grad))
        if self.packed and grads and len({grad.dtype for _, grad in grads}) == 1:
            self._reduce_packed(mpi_comm, grads, scale)
            return
        for _, grad in grads:
            buffer = grad if grad.flags.c_contiguous else numpy.ascontiguousarray(grad)
            mpi_comm.Allreduce(MPI.IN_PLACE, buffer)
            if scale is not None:
                buffer *= scale
            if buffer is not grad:
                grad[...] = buffer

    def _reduce_packed(self, mpi_comm, grads, scale):
        # ``grads``: [(param, its gradient)]. One buffer for the model's gradients, kept
        # from step to step; after the reduction each ``param.grad`` is its part of that
        # buffer (no copy back). The updater clears the gradients before the next backward
        # (``cleargrads``), so the next reduction packs new arrays into the buffer.
        from mpi4py import MPI
        dtype = grads[0][1].dtype
        size = sum(grad.size for _, grad in grads)
        if self._buffer is None or self._buffer.size != size or self._buffer.dtype != dtype:
            self._buffer = numpy.empty(size, dtype)
        buffer = self._buffer
        numpy.concatenate([grad.ravel() for _, grad in grads], out=buffer)
        mpi_comm.Allreduce(MPI.IN_PLACE, buffer)
        if scale is not None:
            buffer *= scale
        offset = 0
        for param, grad in grads:
            param.grad = buffer[offset:offset + grad.size].reshape(grad.shape)
            offset += grad.size

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


def bcast_groups(model):
    """``[(dtype, params)]``: the initialized parameters of ``model`` grouped by their own
    dtype (``numpy.dtype``), each group in ChainerMN's order (sorted by name), the groups
    in an order every rank shares.

    ``MeanFirstNccl.bcast_data`` broadcasts each group in its dtype: ChainerMN's packs
    every parameter into one buffer of ``chainer.get_dtype()``, float16 under mixed16,
    which rounded the float32 BatchNorm parameters to float16 at every start and resume.
    """
    groups = {}
    for _, param in sorted(model.namedparams()):
        if param.array is not None:
            groups.setdefault(numpy.dtype(param.dtype), []).append(param)
    return sorted(groups.items(), key=lambda group: group[0].str)


def divide_in_place(array, n):
    """Divide the CuPy ``array`` (float16 or float32) by ``n`` in place, on the current
    stream: computed in float32 and rounded once to the array's dtype."""
    import chainer
    chainer.cuda.elementwise('float32 factor', 'T x', 'x = (T)((float)x * factor)',
                             'distributed_divide_in_place')(numpy.float32(1.0 / n), array)


@functools.lru_cache(maxsize=None)
def mean_first_nccl_class():
    """``MeanFirstNccl``, ChainerMN's ``PureNcclCommunicator`` with two changes (defined on
    first use: ChainerMN's GPU communicators import CuPy's NCCL bindings):

    - ``_multi_node_mean_nccl`` divides each rank's packed gradients by the number of
      ranks before the NCCL sum instead of after it. ChainerMN summed first: in a float16
      allreduce (``comm.allreduce_dtype=float16``) loss-scaled gradients that are finite
      on every rank overflowed to inf in the sum, the more so the more ranks. Divided
      first, the sum of N values each at most max/N is at most max: it overflows only
      where a rank's own gradient already did (which the loss scaling then skips).
    - ``bcast_data`` broadcasts the parameters in their own dtypes (``bcast_groups``).
    """
    import chainer
    from chainermn import nccl
    from chainermn.communicators import _communication_utility, _memory_utility
    from chainermn.communicators.pure_nccl_communicator import PureNcclCommunicator

    class MeanFirstNccl(PureNcclCommunicator):
        __doc__ = mean_first_nccl_class.__doc__

        def __init__(self, mpi_comm):
            super().__init__(mpi_comm)
            self.bcast_buffers = {}
            """``{dtype: DeviceMemory}``: ``bcast_data``'s buffer for each dtype."""

        def bcast_data(self, model):
            self._init_comms()
            stream = chainer.cuda.Stream.null
            for dtype, params in bcast_groups(model):
                n_elems = sum(param.array.size for param in params)
                buffer = self.bcast_buffers.setdefault(dtype, _memory_utility.DeviceMemory())
                buffer.assign(n_elems * dtype.itemsize)
                _memory_utility.pack_params(params, 'data', buffer, dtype, False, stream)
                self.nccl_comm.bcast(buffer.ptr(), n_elems,
                                     _communication_utility._get_nccl_type_id(dtype), 0,
                                     stream.ptr)
                _memory_utility.unpack_params(params, 'data', buffer, dtype, False, stream)

        def _multi_node_mean_nccl(self, sendbuf, recvbuf, n_elems, dtype, stream=None):
            if stream is None:
                stream = chainer.cuda.Stream.null
            self._init_comms()
            if self.size > 1:
                with stream:
                    divide_in_place(sendbuf.array(n_elems, dtype=dtype), self.size)
            self.nccl_comm.allReduce(sendbuf.ptr(), recvbuf.ptr(), n_elems,
                                     _communication_utility._get_nccl_type_id(dtype),
                                     nccl.NCCL_SUM, stream.ptr)

    return MeanFirstNccl


def create_communicator(name, **kwargs):
    """A ChainerMN communicator by name; ``inplace`` is ``InPlaceMeanGrad`` over ``naive``,
    ``pure_nccl`` is ``MeanFirstNccl`` (``mean_first_nccl_class``), which takes one option,
    ``allreduce_grad_dtype`` ('float32' or 'float16'; None: ChainerMN's choice, the
    compute dtype, float16 under mixed16).

    Raises ValueError (ChainerMN's) for names or options the communicator does not take,
    RuntimeError (ChainerMN's) for ``pure_nccl`` without NCCL.
    """
    compat.chainermn_unpack_params()
    compat.chainermn_half_kernels()
    if name == 'pure_nccl':
        unknown = set(kwargs) - {'allreduce_grad_dtype'}
        if unknown:
            raise ValueError('pure_nccl takes no option {}'.format(', '.join(sorted(unknown))))
        from mpi4py import MPI
        comm = mean_first_nccl_class()(MPI.COMM_WORLD)
        comm.set_config('allreduce_grad_dtype', kwargs.get('allreduce_grad_dtype'))
        # ChainerMN's factory default: one kernel packs every gradient.
        comm.set_config('batched_copy', True)
        return comm
    if name == INPLACE:
        if kwargs.get('allreduce_grad_dtype') not in (None, 'float32', numpy.float32):
            # MPI has no portable float16 sum; converting on the CPU would add two passes
            # over the gradients and save nothing on shared memory.
            raise ValueError('allreduce_grad_dtype={} needs the pure_nccl communicator on '
                             'GPUs; on the CPU use comm.allreduce_dtype=float32'.format(
                                 kwargs['allreduce_grad_dtype']))
        return InPlaceMeanGrad(chainermn.create_communicator('naive'))
    return chainermn.create_communicator(name, **kwargs)
