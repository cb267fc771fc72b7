"""scripts/slurm/train.sbatch end to end on a real SLURM cluster: sbatch, srun, scancel and
scontrol as users and sites use them, real signals, a tiny ResNet-50 job on 2 CPU ranks.

They need a cluster whose node runs a job of 2 tasks: scripts/slurm/cluster_up.sh starts a
one-node one on a Debian machine (as root), and .ci/run brings one up around them. Where
none answers, the module is skipped with one line. Each job writes results/<job name> in
the repository (the script's choice of folder), removed afterwards; sbatch's output goes
to the test's temporary folder. With REQUIRE_SLURM=1 (.ci/run), no cluster is an error.
"""
import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from launching import BIN, REPO
from prerequisites import require


def _cluster_down():
    """Why no test can run here, or None."""
    if shutil.which('sbatch') is None:
        return 'no SLURM here (no sbatch on PATH)'
    ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True, timeout=30)
    if ' is UP' not in ping.stdout:  # its first line says which controller is down
        return 'no SLURM controller answers (scontrol ping: {})'.format(
            ((ping.stdout + ping.stderr).strip() or str(ping.returncode)).splitlines()[0])
    return None


require('SLURM tests', _cluster_down(), 'REQUIRE_SLURM',  # .ci/run sets it
        'scripts/slurm/cluster_up.sh starts a one-node cluster as root')

from slurm_jobs import DEADLINE, ENV, FINAL, Job, assert_stopped_with_checkpoint  # noqa: E402

pytestmark = pytest.mark.slurm


@pytest.fixture
def jobs(tmp_path, tiny_sop, record_property):
    """Starts jobs of the batch script on the tiny SOP tree; cancels what is left of them
    and removes their results."""
    started = []

    def start(label, overrides=(), options=(), name=None):
        name = name or 'sop-test-{}-{}'.format(label, uuid.uuid4().hex[:6])
        overrides = ['data.root={}'.format(tiny_sop)] + list(overrides)
        started.append(Job(name, tmp_path / str(len(started)), overrides, options))
        return started[-1]
    yield start
    for job in started:
        record_property(job.id, job.info().get('JobState'))
        subprocess.run(['scancel', job.id], timeout=30)
        shutil.rmtree(job.out, ignore_errors=True)


def test_sbatch_trains_on_two_ranks_and_writes_the_results(jobs):
    job = jobs('finish', ['train.epochs=2'])
    info = job.end()
    output = job.output()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), output
    # The MPI plugin is chosen and said; under it, one MPI job of 2 ranks (a plugin the
    # MPI cannot use gives 2 jobs of 1 rank, or none).
    assert re.search(r'^srun --mpi=\w+ for ', output, re.M), output
    assert 'runtime: 2 rank(s) on 1 node(s)' in output, output
    for name in ('log', 'model.npz', 'config.yaml'):
        assert os.path.exists(os.path.join(job.out, name)), (name, output)


def test_the_time_limit_ends_in_a_checkpoint(jobs):
    # The script's own --signal (TERM 180 s before the limit): with --time=4 SLURM sends
    # it 30 to 60 s after the start, while the job trains; then the limit is far.
    job = jobs('timelimit', ['train.epochs=200'], ['--time=4'])
    info = job.end(timeout=4 * 60 + 30)
    assert_stopped_with_checkpoint(job, info)
    assert info['JobState'] != 'TIMEOUT'


@pytest.mark.parametrize('scancel', [['--batch'], ['--full']], ids=['batch', 'full'])
def test_scancel_as_sites_send_it_ends_in_a_checkpoint(jobs, scancel):
    # --batch: the batch shell alone (as --signal=B:TERM@... does), which passes it on;
    # --full: the batch shell's process group, srun's too were it in it. (Steps only,
    # SLURM's default for a signal, in the requeue and resubmit tests.)
    job = jobs('scancel-' + scancel[0].strip('-'), ['train.epochs=200'])
    job.wait_for_training()
    subprocess.run(['scancel', '--signal=TERM'] + scancel + [job.id], check=True, timeout=30)
    sent = time.monotonic()
    info = job.end(timeout=DEADLINE)
    assert time.monotonic() - sent < DEADLINE
    assert_stopped_with_checkpoint(job, info)


def test_a_requeued_job_continues_from_its_checkpoint_and_finishes(jobs):
    job = jobs('requeue', ['train.epochs=3'])  # 3 iterations an epoch
    job.wait_for_training()
    subprocess.run(['scancel', '--signal=TERM', job.id], check=True, timeout=30)
    stopped_at = assert_stopped_with_checkpoint(job, job.end(timeout=DEADLINE))
    subprocess.run(['scontrol', 'requeue', job.id], check=True, timeout=30)
    info = job.end(restarts=1)
    output = job.output()  # --open-mode=append: both runs
    assert (info['JobState'], info['ExitCode'], info['Restarts']) == ('COMPLETED', '0:0', '1')
    assert re.search(r'resumed from \S+snapshot_iter_{0}\.npz at iteration {0}\b'.format(
        stopped_at), output), output
    assert os.path.exists(os.path.join(job.out, 'model.npz'))
    assert job.checkpoints()[-1].endswith('snapshot_iter_9.npz')


def test_a_resubmitted_job_waits_for_the_stopping_one_and_continues(jobs):
    first = jobs('resubmit', ['train.epochs=3'])
    first.wait_for_training()
    subprocess.run(['scancel', '--signal=TERM', first.id], check=True, timeout=30)
    # The same line again, at once: the old step is still writing its checkpoint.
    second = jobs('resubmit', ['train.epochs=3'], name=first.name)
    pending = second.info()
    assert (pending['JobState'], pending['Reason']) == ('PENDING', 'Dependency')  # singleton
    stopped_at = assert_stopped_with_checkpoint(first, first.end(timeout=DEADLINE))
    info = second.end()
    output = second.output()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), output
    assert re.search(r'resumed from \S+snapshot_iter_{0}\.npz at iteration {0}\b'.format(
        stopped_at), output), output


def test_a_rank_that_dies_takes_the_step_down(jobs):
    job = jobs('rankdies', ['train.epochs=200'])
    job.wait_for_training()
    os.kill(job.rank_pid(1), signal.SIGKILL)
    sent = time.monotonic()
    info = job.end(timeout=DEADLINE)
    assert time.monotonic() - sent < DEADLINE
    output = job.output()
    assert info['JobState'] == 'FAILED' and info['ExitCode'] != '0:0', output
    assert re.search(r'task 1: Killed', output), output


def test_a_start_up_that_hangs_ends_the_job(jobs):
    # One rank stopped before it reaches MPI_Init, as one that died there (seen with UCX):
    # the other waits in MPI_Init until its train.startup_timeout ends it, and srun takes
    # the stopped one down with it.
    job = jobs('startup', ['train.epochs=1', 'train.startup_timeout=15'])
    job.wait(lambda: job.task_pid(1) or job.info().get('JobState') in FINAL, 'rank 1', 120,
             poll=0.1)  # Python's imports take seconds before MPI_Init
    os.kill(job.task_pid(1) or job.fail('rank 1 never ran'), signal.SIGSTOP)
    info = job.end(timeout=15 + 30 + DEADLINE)  # the watchdog's fallback fires 30 s later
    output = job.output()
    assert info['JobState'] == 'FAILED' and info['ExitCode'] != '0:0', output
    assert 'runtime:' not in output, output  # it never started
    # The watchdog's line names train.startup_timeout; where MPI_Init holds Python's lock
    # (mpi4py's import), its fallback writes 'Timeout (...)!' 30 s later. Stacks follow.
    assert re.search(r'train\.startup_timeout|^Timeout \(', output, re.M), output
    assert 'in create_runtime' in output, output


def test_threads_per_rank_under_srun():
    # srun, its binding off: each of 2 ranks may run on every core, and gets its share of
    # them as BLAS threads from srun's task count; a task alone keeps them all.
    probe = ('import os, distributed; os.write(1, "{} {} {}\\n".format('
             'len(os.listdir("/proc/self/task")), len(os.sched_getaffinity(0)), '
             'os.environ.get("OMP_NUM_THREADS")).encode())')
    cores = int(subprocess.run(['sinfo', '--noheader', '--format', '%c'], capture_output=True,
                               text=True, timeout=30).stdout.split()[0])
    for tasks in (2, 1):
        done = subprocess.run(
            ['srun', '--nodes=1', '--ntasks={}'.format(tasks),
             '--cpus-per-task={}'.format(cores // tasks), '--cpu-bind=none', '--mpi=none',
             '--gpus-per-node=0', os.path.join(BIN, 'python'), '-c', probe],
            cwd=REPO, env=dict(ENV, PYTHONPATH=REPO), capture_output=True, text=True,
            timeout=120)
        assert done.returncode == 0, done.stderr
        expected = '{} {} None'.format(max(1, cores // tasks), cores)
        assert done.stdout.splitlines() == [expected] * tasks, (tasks, done.stdout)
