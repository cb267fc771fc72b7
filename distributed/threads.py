"""CPU threads per rank, chosen as NumPy loads its BLAS.

NumPy's OpenBLAS starts one thread per core in every process. Under ``mpiexec -n N``, N
ranks on one node then run N x cores threads on the node's cores and every convolution
waits on the others: 2 ranks on 2 cores trained at 7.9 img/s against 36.5 with one thread
each (BENCHMARKS.md). Unless the user has chosen (``OMP_NUM_THREADS`` and friends), each
rank gets its share of the cores it may run on: ``cores // ranks on this node``, at least
one. The launcher's environment says how many ranks share the node; without one (a plain
``python``, or a process that a SLURM batch script runs itself), the process is alone and
keeps every core. The environment is left as it was
found, so processes this one starts choose for themselves.
"""
import os
import sys

THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')
"""Set any of these to choose the threads per rank yourself."""

LOCAL_RANKS_VARIABLES = (
    'MPI_LOCALNRANKS',             # MPICH and Intel MPI (Hydra)
    'OMPI_COMM_WORLD_LOCAL_SIZE',  # Open MPI
    'MV2_COMM_WORLD_LOCAL_SIZE',   # MVAPICH2
)

SLURM_TASKS_VARIABLES = ('SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE')
"""srun's tasks on each node of the job step, in SLURM's compressed form ('2(x3),1': 2 on
each of the first three nodes, then 1), indexed by SLURM_NODEID. Read in a step only
(SLURM_STEP_ID): a batch script's own processes see the job's counts there, yet are alone.
Not SLURM_NTASKS_PER_NODE, the job's request, which a step of fewer tasks does not change."""


def tasks_per_node(value):
    """[2, 2, 2, 1] from SLURM's '2(x3),1'."""
    counts = []
    for part in value.split(','):
        count, _, repeat = part.partition('(x')
        counts += [int(count)] * int(repeat.rstrip(')') or 1)
    return counts


def local_ranks(environ):
    """Ranks on this node according to the launcher's environment (1 when none says)."""
    for name in LOCAL_RANKS_VARIABLES:
        value = environ.get(name, '')
        if value.isdigit() and int(value) > 0:
            return int(value)
    if 'SLURM_STEP_ID' in environ:
        for name in SLURM_TASKS_VARIABLES:
            try:
                count = tasks_per_node(environ[name])[int(environ.get('SLURM_NODEID', 0))]
            except (KeyError, ValueError, IndexError):
                continue
            if count > 0:
                return count
    return 1


def choose(environ, cores):
    """Set the thread variables in ``environ`` unless one is set already; say what and why."""
    chosen = [name for name in THREAD_VARIABLES if environ.get(name)]
    if chosen:
        return 'threads per rank: {} (from {})'.format(environ[chosen[0]], chosen[0])
    ranks = local_ranks(environ)
    threads = max(1, cores // ranks)
    for name in THREAD_VARIABLES:
        environ[name] = str(threads)
    return ('threads per rank: {} ({} cores / {} rank(s) on this node; set OMP_NUM_THREADS '
            'to choose)'.format(threads, cores, ranks))


def usable_cores():
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


PER_RANK = None
"""The BLAS threads this process loaded NumPy with (a str, as the variables hold it), once
``load_numpy`` has run; None where NumPy was imported before it."""


def load_numpy():
    """Import NumPy with this process's share of BLAS threads; return ``choose``'s line."""
    global PER_RANK
    if 'numpy' in sys.modules:
        return 'threads per rank: NumPy\'s own choice (NumPy was imported before distributed)'
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    line = choose(os.environ, usable_cores())
    PER_RANK = next(os.environ[name] for name in THREAD_VARIABLES if os.environ.get(name))
    try:
        import numpy  # noqa: F401  (OpenBLAS reads the thread count once, as it loads)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return line
