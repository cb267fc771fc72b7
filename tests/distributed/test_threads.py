"""distributed.threads: each rank's share of the cores, unless the user chose."""
import os
import re
import subprocess
import sys

import numpy
import pytest

from distributed import threads
from launching import MPIEXEC, REPO

CORES = len(os.sched_getaffinity(0))


def blas_thread_cap():
    """The most threads NumPy's OpenBLAS ever starts: its build's MAX_THREADS (64 in NumPy's
    wheels), whatever the cores or the variables say; CORES where the build does not say."""
    try:
        config = numpy.show_config(mode='dicts')['Build Dependencies']['blas']
        return int(re.search(r'MAX_THREADS=(\d+)', config['openblas configuration']).group(1))
    except (KeyError, TypeError, AttributeError):
        return CORES


CAP = blas_thread_cap()
# One write per rank, so that the two ranks' lines cannot interleave.
PROBE = ('import os, distributed; os.write(1, "{} {} {}\\n".format('
         'len(os.listdir("/proc/self/task")), len(os.sched_getaffinity(0)), '
         'os.environ.get("OMP_NUM_THREADS")).encode())')


def test_each_rank_gets_its_share_of_the_cores():
    env = {'MPI_LOCALNRANKS': '4'}
    line = threads.choose(env, cores=16)
    assert env['OMP_NUM_THREADS'] == env['OPENBLAS_NUM_THREADS'] == '4'
    assert line.startswith('threads per rank: 4 (16 cores / 4 rank(s) on this node')
    env = {'OMPI_COMM_WORLD_LOCAL_SIZE': '8'}
    threads.choose(env, cores=4)
    assert env['OMP_NUM_THREADS'] == '1'  # never zero
    env = {}
    threads.choose(env, cores=8)  # no launcher: alone on the node
    assert env['OMP_NUM_THREADS'] == '8'


def test_srun_tasks_on_this_node_come_from_the_steps_compressed_counts():
    # srun -n 9 over 3 nodes: 4, 4 and 1 tasks. SLURM_NODEID picks this node's count.
    step = {'SLURM_STEP_ID': '0', 'SLURM_STEP_TASKS_PER_NODE': '4(x2),1',
            'SLURM_TASKS_PER_NODE': '4(x2),1', 'SLURM_NTASKS_PER_NODE': '4'}
    for node, ranks, share in (('0', 4, '4'), ('1', 4, '4'), ('2', 1, '16')):
        env = dict(step, SLURM_NODEID=node)
        line = threads.choose(env, cores=16)
        assert env['OMP_NUM_THREADS'] == share, (node, line)
        assert '16 cores / {} rank(s) on this node'.format(ranks) in line
    assert threads.tasks_per_node('2(x3),1') == [2, 2, 2, 1]
    assert threads.tasks_per_node('3,1(x2)') == [3, 1, 1]
    # A step of 1 task in a job of --ntasks-per-node=2: the step's count, not the job's.
    env = {'SLURM_STEP_ID': '1', 'SLURM_STEP_TASKS_PER_NODE': '1', 'SLURM_NODEID': '0',
           'SLURM_NTASKS_PER_NODE': '2'}
    threads.choose(env, cores=8)
    assert env['OMP_NUM_THREADS'] == '8'
    # Without SLURM_STEP_TASKS_PER_NODE (older srun), the step's SLURM_TASKS_PER_NODE.
    env = {'SLURM_STEP_ID': '0', 'SLURM_TASKS_PER_NODE': '2', 'SLURM_NODEID': '0'}
    threads.choose(env, cores=8)
    assert env['OMP_NUM_THREADS'] == '4'
    # The batch script's own process (no step): alone, whatever the job's counts say.
    env = {'SLURM_TASKS_PER_NODE': '2', 'SLURM_NTASKS_PER_NODE': '2', 'SLURM_NODEID': '0'}
    threads.choose(env, cores=8)
    assert env['OMP_NUM_THREADS'] == '8'
    # An MPI launcher's own count comes first (mpiexec inside an allocation).
    env = dict(step, SLURM_NODEID='0', MPI_LOCALNRANKS='2')
    threads.choose(env, cores=16)
    assert env['OMP_NUM_THREADS'] == '8'


def test_the_users_choice_is_kept():
    env = {'MPI_LOCALNRANKS': '4', 'OPENBLAS_NUM_THREADS': '3'}
    assert threads.choose(env, cores=16) == 'threads per rank: 3 (from OPENBLAS_NUM_THREADS)'
    assert 'OMP_NUM_THREADS' not in env


def _probe(ranks, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in threads.THREAD_VARIABLES + threads.LOCAL_RANKS_VARIABLES
           and not k.startswith('SLURM_')}
    env.update(PYTHONPATH=REPO, **extra)
    command = [sys.executable, '-c', PROBE]
    if ranks > 1:
        command = [MPIEXEC, '-n', str(ranks)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line.split() for line in done.stdout.splitlines()]


@pytest.mark.skipif(CORES < 2, reason='needs 2 cores to tell 1 thread from several')
def test_ranks_started_by_mpiexec_run_one_blas_thread_per_core_share():
    # The process's thread count is what OpenBLAS really started (never more than the
    # cores the rank may run on: Open MPI binds each of 2 ranks to a core, Hydra does not
    # bind; nor than the cap OpenBLAS was built with). The environment is left as it was
    # found, so processes a rank starts choose for themselves.
    ranks = _probe(2)
    assert len(ranks) == 2
    for started, cores, variable in ranks:
        assert (int(started), variable) == (min(max(1, int(cores) // 2), CAP), 'None')
    assert _probe(1) == [[str(min(CORES, CAP)), str(CORES), 'None']]
    for started, cores, variable in _probe(2, OMP_NUM_THREADS='2'):
        assert (int(started), variable) == (min(2, int(cores)), '2')
