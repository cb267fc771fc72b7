"""Who am I: the communicator, rank, size, device and ``is_root``, decided once."""
import dataclasses
import multiprocessing
import multiprocessing.forkserver
import os
import socket
import sys
import warnings

import chainer
import numpy

import distributed
from distributed import comm as comm_module, compat, liveness, threads
from distributed.cudnn import dispatch
from distributed.failures import abort_on_uncaught_exceptions

GPU_COMMUNICATORS = ('pure_nccl', 'flat', 'non_cuda_aware')
"""ChainerMN communicators that move CuPy arrays (none of them runs on the CPU)."""


class StartupError(RuntimeError):
    """The job cannot start on this machine as configured; the message says why."""


@dataclasses.dataclass
class Runtime:
    comm: object
    """The ChainerMN communicator (size 1 when run without mpiexec)."""
    device: chainer.backend.Device
    """The device this rank computes on."""
    communicator: str = ''
    """The communicator's name (``comm.communicator`` with 'auto' resolved)."""
    nodes: int = 1
    """Machines the ranks run on."""
    watchdog: liveness.Watchdog = dataclasses.field(
        default_factory=lambda: liveness.Watchdog(0, 0))
    """Ends this rank when it stops making progress (``train.stall_timeout``); the work
    marks its progress on it (``liveness.Watchdog.progress``). Not watching by default."""

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

    @property
    def on_gpu(self):
        return self.device.xp is not numpy


def _start_forkserver():
    # MultiprocessIterator workers must not be forked from a process that holds an MPI
    # context: start the forkserver before MPI is initialised (ChainerMN's advice).
    multiprocessing.set_start_method('forkserver', force=True)
    # The forkserver and the loader workers it forks ignore the stop signals: a launcher
    # signals a rank's whole process group (Hydra) or every process of the job (SLURM),
    # and a worker killed by it loses the batch its rank waits for. The rank decides;
    # its workers end when its iterators are finalized, or when it is gone (their task
    # pipe closes).
    with liveness.children_ignore_stop_signals():
        multiprocessing.forkserver.ensure_running()


def probe_gpus():
    """``(count, why)``: GPUs CuPy sees, and when none, a sentence saying why."""
    try:
        import cupy
    except ImportError:
        return 0, ('CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x, '
                   'matching the CUDA driver)')
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return 0, f'CuPy {cupy.__version__} finds no usable GPU ({type(e).__name__}: {e})'
    if count == 0:
        return 0, 'CuPy {} sees no GPU (CUDA_VISIBLE_DEVICES={!r})'.format(
            cupy.__version__, os.environ.get('CUDA_VISIBLE_DEVICES'))
    return count, ''


def select_device(setting, local_index, size, gpus=None):
    """``chainer.backend.Device`` for this rank from the config's ``device`` setting.

    ``local_index`` is this rank's place among the ranks of its node that see the same
    GPUs (its node-local rank unless the launcher gave each rank its own
    CUDA_VISIBLE_DEVICES). ``gpus`` is ``probe_gpus()``'s answer (probed when None).
    Raises ``StartupError`` saying what to change.
    """
    if setting == 'cpu':
        return chainer.get_device('@numpy')
    count, why = gpus if gpus is not None else probe_gpus()
    if setting == 'auto' and count == 0:
        return chainer.get_device('@numpy')
    if count == 0:
        raise StartupError('device={} asks for a GPU, but {}. Use device=cpu (or auto) to '
                           'train on the CPU.'.format(setting, why))
    if setting == 'auto':
        if local_index >= count:
            raise StartupError(
                'device=auto: {} ranks on this node share {} visible GPU(s); start at most '
                '{} rank(s) per node, one per GPU (mpiexec -npernode/-ppn {}, or srun '
                '--ntasks-per-node={}).'.format(local_index + 1, count, count, count, count))
        index = local_index
    else:
        index = int(setting)
        if size > 1:
            raise StartupError(
                'device={} names one GPU, but {} ranks run; use device=auto so that each '
                'rank takes the GPU of its node-local rank.'.format(setting, size))
        if index >= count:
            raise StartupError('device={}: only {} GPU(s) visible (ids 0 to {}).'.format(
                setting, count, count - 1))
    return chainer.get_device(f'@cupy:{index}')


def nccl_available():
    """NCCL as ChainerMN sees it (CuPy 14's ``cupy.cuda.nccl`` imports without libnccl)."""
    from chainermn import nccl
    return nccl._available


def communicator_name(setting, device):
    """'auto': ``pure_nccl`` on GPUs (``flat`` without NCCL), the in-place one on the CPU."""
    if setting != 'auto':
        return setting
    if device.xp is numpy:
        return comm_module.INPLACE
    return 'pure_nccl' if nccl_available() else 'flat'


def check_communicator(name, device, allreduce_dtype):
    """Raise ``StartupError`` for a communicator that cannot work on ``device``."""
    on_gpu = device.xp is not numpy
    if name in GPU_COMMUNICATORS and not on_gpu:
        raise StartupError(
            'comm.communicator={} moves GPU arrays, but this rank computes on the CPU; use '
            'comm.communicator=auto (or {} / naive) on the CPU.'.format(
                name, comm_module.INPLACE))
    if name == comm_module.INPLACE and on_gpu:
        raise StartupError(
            'comm.communicator={} reduces NumPy arrays on the CPU, but this rank computes on '
            'a GPU; use comm.communicator=auto (pure_nccl, or flat without NCCL).'.format(name))
    if name in ('pure_nccl', 'non_cuda_aware') and not nccl_available():
        raise StartupError(
            'comm.communicator={} needs NCCL, which CuPy cannot load here; install it '
            '(pip install nvidia-nccl-cu12 or nvidia-nccl-cu13, matching CuPy) or use '
            'comm.communicator=flat with a CUDA-aware MPI.'.format(name))
    if allreduce_dtype == 'float16' and name != 'pure_nccl':
        raise StartupError(
            'comm.allreduce_dtype=float16 needs the pure_nccl communicator on GPUs, but '
            'this run uses {} on the {}; use comm.allreduce_dtype=float32.'.format(
                name, 'GPU' if on_gpu else 'CPU'))


def communicator_options(name, allreduce_dtype):
    """The keyword arguments for ``comm.create_communicator(name)``: ``pure_nccl`` is
    always told ``comm.allreduce_dtype``; without it ChainerMN reduces in the compute
    dtype, float16 under mixed16, whatever the config said."""
    return {'allreduce_grad_dtype': allreduce_dtype} if name == 'pure_nccl' else {}


def set_precision(dtype):
    """``train.dtype``: 'mixed16' makes chainer keep activations and conv/linear weights in
    float16 (BatchNorm stays float32); the optimizer keeps float32 master copies."""
    chainer.global_config.dtype = (chainer.mixed16 if dtype == 'mixed16'
                                   else numpy.dtype(dtype))


def _local_index(node_comm):
    # Ranks of a node given different CUDA_VISIBLE_DEVICES (srun --gpu-bind, or a wrapper
    # script) each see their own GPU as 0; ranks seeing the same GPUs divide them in order.
    mine = os.environ.get('CUDA_VISIBLE_DEVICES')
    seen = node_comm.allgather(mine)
    return sum(1 for other in seen[:node_comm.rank] if other == mine)


def agree(mpi_comm, error):
    """Collective: raise ``StartupError`` on every rank if ``error`` is set on any rank."""
    failed = [(rank, e) for rank, e in enumerate(mpi_comm.allgather(error)) if e]
    if failed:
        rank, message = failed[0]
        if mpi_comm.size > 1:
            message = f'rank {rank} ({len(failed)} of {mpi_comm.size} ranks failed): {message}'
        raise StartupError(message)


def create_runtime(config):
    """Start MPI (or a size-1 world without mpiexec) and pick this rank's device.

    Every check runs on every rank and the outcome is shared, so a problem on one rank
    (a node with fewer GPUs) makes every rank raise the same ``StartupError`` instead of
    leaving the others waiting in a collective. The rank's watchdog starts first, so that
    an MPI start-up that never returns ends too (``train.startup_timeout``).
    """
    watchdog = liveness.Watchdog(config.train.stall_timeout,
                                 config.train.startup_timeout).start()
    if config.data.loader == 'multiprocess':
        _start_forkserver()
    abort_on_uncaught_exceptions()
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    watchdog.rank = world.rank
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local_index = _local_index(node)
    nodes = world.allreduce(1 if node.rank == 0 else 0)
    node.Free()
    device = name = error = None
    try:
        device = select_device(config.device, local_index, world.size)
        name = communicator_name(config.comm.communicator, device)
        check_communicator(name, device, config.comm.allreduce_dtype)
        dispatch.setup(config.train.conv_bn, device.xp is not numpy)
    except (StartupError, dispatch.Unavailable) as e:
        error = str(e)
    agree(world, error)
    set_precision(config.train.dtype)
    compat.chainer_summary_float64()
    try:
        comm = comm_module.create_communicator(
            name, **communicator_options(name, config.comm.allreduce_dtype))
    except ValueError as e:
        raise StartupError(f'comm.communicator={name}: {e}')
    device.use()
    return Runtime(comm=comm, device=device, communicator=name, nodes=nodes,
                   watchdog=watchdog)


def _version(name):
    try:
        import importlib.metadata
        return importlib.metadata.version(name)
    except Exception:
        return None


def _cuda_version(code):
    return f'{code // 1000}.{code % 1000 // 10}'


def _gpu_lines(runtime):
    try:
        import cupy
    except ImportError:
        return ['CuPy: not installed (CPU only)']
    if not runtime.on_gpu:
        return [f'CuPy {cupy.__version__}: installed, not used (device=cpu, or no GPU)']
    from chainer.backends import cuda
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(runtime.device.device.id)
    name = props['name'].decode() if isinstance(props['name'], bytes) else props['name']
    lines = ['CuPy {}, CUDA runtime {} (driver {}), GPU {}: {} ({:.0f} GiB)'.format(
        cupy.__version__, _cuda_version(rt.runtimeGetVersion()),
        _cuda_version(rt.driverGetVersion()), runtime.device.device.id, name,
        props['totalGlobalMem'] / 2 ** 30)]
    if cuda.cudnn_enabled:
        lines.append(f'cuDNN {cuda.cuda.cudnn.getVersion()}')
    else:
        lines.append('cuDNN: absent from CuPy (CuPy >= 14 has no cuDNN support): chainer '
                     'runs pooling with CuPy kernels')
    lines.append(dispatch.describe())
    if nccl_available():
        from cupy.cuda import nccl
        code = nccl.get_version()
        lines.append(f'NCCL {code // 10000}.{code % 10000 // 100}.{code % 100}')
    else:
        lines.append('NCCL: absent (gradients go through MPI, which must be CUDA-aware)')
    return lines


def describe_ranks(runtime):
    """``'ranks: 0 pid 123 on host (2 threads), ...'``, each rank's process, host and BLAS
    threads (chosen per node: its cores shared by its ranks), on rank 0 (None on the
    others); collective. Lets a message from mpiexec about a process id be traced to its
    rank."""
    blas = threads.PER_RANK or "NumPy's"
    where = runtime.comm.mpi_comm.gather(
        f'{runtime.rank} pid {os.getpid()} on {socket.gethostname()} ({blas} threads)')
    return 'ranks: ' + ', '.join(where) if runtime.is_root else None


def describe_runtime(runtime):
    """What this job runs on, for rank 0 to print once at start. Not collective."""
    from mpi4py import MPI
    import chainercv
    where = 'GPU' if runtime.on_gpu else 'CPU'
    dtype = chainer.config.dtype
    precision = 'mixed16' if dtype is chainer.mixed16 else numpy.dtype(dtype).name
    lines = ['runtime: {} rank(s) on {} node(s), one {} each, communicator {}, '
             'precision {}'.format(runtime.size, runtime.nodes, where, runtime.communicator,
                                   precision),
             '  Python {}, chainer {}, chainercv {}, NumPy {}'.format(
                 sys.version.split()[0], chainer.__version__, chainercv.__version__,
                 numpy.__version__)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        lines += ['  ' + line for line in _gpu_lines(runtime)]
    lines.append('  ' + distributed.THREADS)
    library = MPI.Get_library_version().strip().splitlines()[0]
    lines.append('  MPI: {} (MPI {}.{}, mpi4py {}), host {}'.format(
        ' '.join(library.split()), *MPI.Get_version(), _version('mpi4py'),
        socket.gethostname()))
    return '\n'.join(lines)
