"""Who am I: the communicator, rank, size, device and ``is_root``, decided once."""
import dataclasses
import multiprocessing
import os

import chainer
import chainermn


class RuntimeError_(RuntimeError):
    """The job cannot start on this machine as configured; the message says why."""


@dataclasses.dataclass
class Runtime:
    comm: object
    """The ChainerMN communicator (size 1 when run without mpiexec)."""
    device: chainer.backend.Device
    """The device this rank computes on."""

    @property
    def rank(self):
        return self.comm.rank

    @property
    def size(self):
        return self.comm.size

    @property
    def intra_rank(self):
        return self.comm.intra_rank

    @property
    def is_root(self):
        """Rank 0 alone reports, plots and writes results."""
        return self.comm.rank == 0


def _start_forkserver():
    # MultiprocessIterator workers must not be forked from a process that holds an MPI
    # context: start the forkserver before MPI is initialised (ChainerMN's advice).
    multiprocessing.set_start_method('forkserver', force=True)
    p = multiprocessing.Process()
    p.start()
    p.join()


def gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def select_device(setting, intra_rank, size):
    """``chainer.backend.Device`` for this rank from the config's ``device`` setting."""
    if setting == 'cpu' or (setting == 'auto' and gpu_count() == 0):
        return chainer.get_device('@numpy')
    n = gpu_count()
    if n == 0:
        raise RuntimeError_('device={} asks for a GPU, but CuPy finds none (is CuPy installed '
                            'and CUDA visible?); use device=cpu to train on the CPU'.format(setting))
    if setting == 'auto':
        if intra_rank >= n:
            raise RuntimeError_('{} ranks on this node but only {} GPUs visible; start at most '
                                '{} ranks per node (one per GPU)'.format(intra_rank + 1, n, n))
        index = intra_rank
    else:
        index = int(setting)
        if size > 1:
            raise RuntimeError_('device={} names one GPU, but {} ranks run; use device=auto '
                                'so each rank takes the GPU of its node-local rank'.format(
                                    setting, size))
        if index >= n:
            raise RuntimeError_('device={}: only {} GPUs visible'.format(setting, n))
    return chainer.get_device('@cupy:{}'.format(index))


def communicator_name(setting, device):
    if setting != 'auto':
        return setting
    if device.xp is chainer.backend.CpuDevice().xp:
        return 'naive'
    try:
        from cupy.cuda import nccl  # noqa: F401
        return 'pure_nccl'
    except ImportError:
        return 'flat'


def create_runtime(config):
    """Start MPI (or a size-1 world without mpiexec) and pick this rank's device."""
    if config.data.loader == 'multiprocess':
        _start_forkserver()
    # One rank raising an uncaught exception aborts every rank instead of leaving them
    # waiting in a collective forever.
    if not os.environ.get('CHAINERMN_FORCE_ABORT_ON_EXCEPTION'):
        chainermn.global_except_hook.add_hook()
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    intra_rank = world.Split_type(MPI.COMM_TYPE_SHARED).rank
    device = select_device(config.device, intra_rank, world.size)
    name = communicator_name(config.comm.communicator, device)
    kwargs = {}
    if config.comm.allreduce_dtype == 'float16':
        kwargs['allreduce_grad_dtype'] = 'float16'
    try:
        comm = chainermn.create_communicator(name, **kwargs)
    except ValueError as e:
        raise RuntimeError_('comm.communicator={}: {}'.format(name, e))
    device.use()
    return Runtime(comm=comm, device=device)
