"""scripts/slurm/train.sbatch across nodes: a SLURM cluster on the test hosts, a slurmd on
each under its own host name, ``sbatch --nodes=2`` and srun placing ranks on both.

The cluster is scripts/slurm/cluster_up.sh --testbed's (root), on scripts/testbed/up.sh's
hosts sop-n1..sop-n3 (or those it names): slurmctld on the first, where SLURM's commands
run (``scripts/testbed/on sop-n1 ...``).
The jobs' MPI goes over TCP (MPICH's libfabric netmod, FI_PROVIDER=tcp): between hosts
through the bridge, as between real hosts; the first test checks that the bridge carried
the weights. Not UCX (UCX_TLS=tcp,self, as the Hydra tests): its address cards are long,
and Slurm 22.05's PMI-2 server (srun --mpi=pmi2) garbled them in one start of a few
('mpi/pmi2: value not properly terminated in client request', then MPI_Init fails).
Where no such cluster is up (or this is not root), the module is skipped with one line;
with REQUIRE_MULTINODE_SLURM=1 (.ci/run) that is an error instead.
"""
import os
import re
import shutil
import subprocess
import time
import uuid

import numpy
import pytest

from launching import BIN, REPO
from prerequisites import require

BED = '/var/lib/sop-testbed'
ON = os.path.join(REPO, 'scripts', 'testbed', 'on')
CONF = '/var/lib/sop-slurm/testbed/etc/slurm.conf'


def _nodes():
    """The cluster's nodes, from its configuration: the controller's host first."""
    try:
        with open(CONF) as f:
            found = re.search(r'^NodeName=(\S+)', f.read(), re.M)
    except OSError:
        return []
    return found.group(1).split(',') if found else []


HOSTS = _nodes()
PREFIX = [ON] + HOSTS[:1]
"""SLURM's commands run on the controller's host, where the cluster's /etc/slurm is."""


def _cluster_down():
    """Why no test can run here, or None."""
    if os.geteuid() != 0:
        return 'not root (the tests enter the test hosts\' namespaces)'
    if len(HOSTS) < 3:
        return 'no SLURM cluster of 3 test hosts ({} names {})'.format(CONF, HOSTS or 'none')
    if not os.path.exists(os.path.join(BED, 'n' + HOSTS[0][len('sop-n'):], 'sshd.pid')):
        return 'no test host {} is up (scripts/testbed/up.sh)'.format(HOSTS[0])
    try:
        ping = subprocess.run(PREFIX + ['scontrol', 'ping'], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return 'scontrol ping on {} did not answer within 30 s'.format(HOSTS[0])
    if ' is UP' not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip() or str(ping.returncode)
        return 'no SLURM controller answers on {} (scontrol ping: {})'.format(
            HOSTS[0], said.splitlines()[0])
    return None


require('multinode SLURM tests', _cluster_down(), 'REQUIRE_MULTINODE_SLURM',  # .ci/run
        'scripts/slurm/cluster_up.sh --testbed (root) starts a cluster on the test hosts')

from slurm_jobs import (ENV, FINAL, Job,  # noqa: E402
                        assert_stopped_with_checkpoint)

pytestmark = [pytest.mark.multinode, pytest.mark.slurm]

N1, N2, N3 = HOSTS[:3]
"""Jobs run on N1 + N2 (the batch shell, rank 0 on N1); N3 is the spare. The names in the
comments below are those of scripts/slurm/cluster_up.sh --testbed's default."""

TESTBED_ENV = dict(ENV, MPIR_CVAR_CH4_NETMOD='ofi', FI_PROVIDER='tcp')
SLURMD_TIMEOUT = 20   # s: cluster_up.sh --testbed's SlurmdTimeout
MESSAGE_TIMEOUT = 10  # s: SLURM's MessageTimeout, how long a ping waits for its answer
KILL_WAIT = 30        # s: SLURM's KillWait, from SIGTERM to SIGKILL when a step is ended
LOST_BOUND = SLURMD_TIMEOUT * 4 // 3 + MESSAGE_TIMEOUT + KILL_WAIT + 20
"""Seconds from a node's link going down to the job being over on every other node:
slurmctld pings every SlurmdTimeout / 3 and gives a node up once it has not answered for
SlurmdTimeout (a ping waiting MessageTimeout for its answer), then the step's other
tasks get SIGTERM and, KillWait later, SIGKILL; then the step's teardown (66 to 77 s in
all here, on 2 busy cores; docs/across_nodes.md)."""


def sinfo():
    """{node: state} ('idle', 'down*', ...)."""
    done = subprocess.run(PREFIX + ['sinfo', '--noheader', '--Node', '--format', '%N %T'],
                          capture_output=True, text=True, timeout=30)
    return dict(line.split() for line in done.stdout.splitlines())


CORES = len(os.sched_getaffinity(0))
"""The test hosts share this machine's cores: each host has all of them."""


def on(host, *command):
    return subprocess.run([ON, host] + list(command), capture_output=True, text=True,
                          timeout=60)


def link(host, state):
    """``host``'s link to the bridge 'up' or 'down'; up again, its neighbour entries are
    flushed (a failed one answers 'No route to host' for seconds after)."""
    namespace = 'soptb-n' + host[len('sop-n'):]
    subprocess.run(['ip', '-n', namespace, 'link', 'set', 'eth0', state], check=True,
                   timeout=30)
    if state == 'up':
        subprocess.run(['ip', '-n', namespace, 'neigh', 'flush', 'all'], check=True,
                       timeout=30)


def jobs_left():
    """{host: {pid: command}} of what runs on the test hosts for a job of this cluster: its
    slurmstepd, and every process with SLURM_JOB_ID in its environment (the batch shell,
    srun, the ranks, their loader workers)."""
    namespaces = {}
    for host in HOSTS:
        with open(os.path.join(BED, 'n' + host[len('sop-n'):], 'sshd.pid')) as f:
            namespaces[os.readlink('/proc/{}/ns/net'.format(f.read().strip()))] = host
    left = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            host = namespaces.get(os.readlink('/proc/{}/ns/net'.format(pid)))
            if host is None:
                continue
            with open('/proc/{}/cmdline'.format(pid), 'rb') as f:
                command = f.read().replace(b'\0', b' ').decode(errors='replace')
            with open('/proc/{}/environ'.format(pid), 'rb') as f:
                ours = b'SLURM_JOB_ID=' in f.read()
            with open('/proc/{}/stat'.format(pid)) as f:
                zombie = f.read().rsplit(')', 1)[1].split()[0] == 'Z'
        except OSError:  # gone
            continue
        if (ours or command.startswith('slurmstepd')) and not zombie:
            left.setdefault(host, {})[int(pid)] = command
    return left


def assert_intact(paths):
    """Each checkpoint reads whole (every array of the zip archive)."""
    for path in paths:
        with numpy.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                archive[key]


def wait_until(condition, timeout, what):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, 'no {} within {} s'.format(what, timeout)
        time.sleep(0.5)


@pytest.fixture
def jobs(tmp_path, tiny_sop, record_property):
    """Starts jobs of the batch script on the test hosts' cluster; afterwards every link is
    up, every node idle again, the jobs cancelled and their results removed, and nothing
    of them runs on any host (the test fails if something did)."""
    started = []
    resume_nodes()

    def start(label, overrides=(), options=()):
        name = 'sop-test-{}-{}'.format(label, uuid.uuid4().hex[:6])
        overrides = ['data.root={}'.format(tiny_sop)] + list(overrides)
        started.append(Job(name, tmp_path / str(len(started)), overrides,
                           ['--nodes=2'] + list(options), prefix=PREFIX, env=TESTBED_ENV))
        return started[-1]
    yield start
    for host in HOSTS:
        link(host, 'up')
    for job in started:
        record_property(job.id, job.info().get('JobState'))
        job.scancel()
        shutil.rmtree(job.out, ignore_errors=True)
    resume_nodes()
    end = time.monotonic() + 120  # a slurmstepd cut off retries its report for a while
    while jobs_left() and time.monotonic() < end:
        time.sleep(0.5)
    assert not jobs_left(), 'left on the test hosts: {}'.format(jobs_left())


def resume_nodes():
    """Every node idle: one given up while its link was down (DOWN) is taken back."""
    for node, state in sinfo().items():
        if state.startswith('down'):
            subprocess.run(PREFIX + ['scontrol', 'update', 'nodename=' + node,
                                     'state=resume'], timeout=30)
    wait_until(lambda: set(sinfo().values()) == {'idle'}, 120, 'idle cluster')


def ranks_line(output):
    """[(rank, host, threads)] of each start's 'ranks:' line."""
    return [re.findall(r'(\d+) pid \d+ on (\S+) \((\S+) threads\)', line)
            for line in re.findall(r'^ranks: (.*)$', output, re.M)]


def bridge_bytes(host):
    """Bytes received and sent on ``host``'s link to the bridge so far."""
    total = 0
    for way in ('rx', 'tx'):
        done = subprocess.run([ON, host, 'cat', '/sys/class/net/eth0/statistics/{}_bytes'.format(
            way)], capture_output=True, text=True, timeout=30, check=True)
        total += int(done.stdout)
    return total


def test_two_nodes_train_to_the_end_across_the_bridge_and_only_rank_0_writes(
        jobs, tmp_path):
    # 2 nodes x 2 ranks, out in a folder that only N1 sees (a tmpfs mounted there in its
    # own mount namespace; N2 sees this machine's empty folder).
    own = str(tmp_path / 'own')
    os.makedirs(own)
    assert on(N1, 'mount', '-t', 'tmpfs', '-o', 'size=1g', 'sop-own', own).returncode == 0
    out = os.path.join(own, 'out')
    before = bridge_bytes(N2)
    try:
        job = jobs('two-nodes', ['train.epochs=1', 'out=' + out],
                   ['--nodelist={},{}'.format(N1, N2), '--ntasks-per-node=2',
                    '--cpus-per-task=1'])
        info = job.end()
        output = job.output()
        assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), output
        assert 'runtime: 4 rank(s) on 2 node(s)' in output, output
        # Each node's 2 ranks share its cores: the tasks' cpus, 1 thread each.
        assert ranks_line(output) == [[('0', N1, '1'), ('1', N1, '1'),
                                       ('2', N2, '1'), ('3', N2, '1')]], output
        for name in ('log', 'model.npz', 'config.yaml'):
            assert on(N1, 'test', '-f', os.path.join(out, name)).returncode == 0, (name, output)
        # Nothing under `own` for N2: no rank there wrote a file (folders may be there:
        # chainer's Trainer makes its out on every rank).
        assert on(N2, 'find', own, '-not', '-type', 'd').stdout == '', output
        # The weights' broadcast alone moves ResNet-50's 25.6 M float32 parameters to
        # N2: had the ranks shared memory, the bridge would not have carried them.
        crossed = bridge_bytes(N2) - before
        assert crossed > 100e6, (crossed, output)
    finally:
        on(N1, 'umount', own)


def test_each_node_gives_its_ranks_their_share_of_its_cores():
    # 3 tasks in blocks on 2 nodes: 2 on sop-n1, 1 on sop-n2, each node's cores theirs
    # (--mincpus; SLURM would give sop-n2's task 1 core), srun's binding off, no thread
    # variable: each rank computes its node's share from srun's tasks per node.
    probe = ('import os, socket, distributed; os.write(1, "{} {}\\n".format('
             'socket.gethostname(), len(os.listdir("/proc/self/task"))).encode())')
    env = {k: v for k, v in TESTBED_ENV.items() if k != 'VENV'}
    done = subprocess.run(
        PREFIX + ['srun', '--nodes=2', '--ntasks=3', '--distribution=block',
                  '--mincpus={}'.format(CORES),
                  '--nodelist={},{}'.format(N1, N2), '--cpu-bind=none', '--mpi=none',
                  '--gpus-per-node=0', os.path.join(BIN, 'python'), '-c', probe],
        cwd=REPO, env=dict(env, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        '{} {}'.format(N1, max(1, CORES // 2))] * 2 + ['{} {}'.format(N2, CORES)], done.stdout


def test_the_time_limit_ends_in_a_checkpoint_and_the_requeued_job_resumes_on_other_nodes(
        jobs):
    # The script's own --signal (TERM 180 s before the limit: 30 to 60 s after the start
    # with --time=4) stops the job on sop-n1 + sop-n2. Requeued with sop-n1 excluded (and
    # more time), SLURM places it on sop-n2 + sop-n3: rank 0 on another host, reading the
    # checkpoint from `out`, which every node sees (the repository's results/).
    job = jobs('requeue-elsewhere', ['train.epochs=20'],
               ['--exclude=' + ','.join(HOSTS[2:]), '--ntasks-per-node=1', '--cpus-per-task=1',
                '--time=4'])
    info = job.end(timeout=4 * 60 + 30)
    stopped_at = assert_stopped_with_checkpoint(job, info)
    assert info['JobState'] != 'TIMEOUT'
    for command in (['requeuehold', job.id],
                    ['update', 'jobid=' + job.id, 'ExcNodeList=' + ','.join([N1] + HOSTS[3:]),
                     'TimeLimit=15'],
                    ['release', job.id]):
        subprocess.run(PREFIX + ['scontrol'] + command, check=True, timeout=30)
    info = job.end(restarts=1, timeout=600)
    output = job.output()  # --open-mode=append: both runs
    assert (info['JobState'], info['ExitCode'], info['Restarts']) == ('COMPLETED', '0:0', '1'), \
        output
    assert [sorted(host for _, host, _ in line) for line in ranks_line(output)] == [
        [N1, N2], [N2, N3]], output
    assert re.search(r'resumed from \S+snapshot_iter_{0}\.npz at iteration {0}\b'.format(
        stopped_at), output), output
    assert job.checkpoints()[-1].endswith('snapshot_iter_60.npz'), job.checkpoints()


def test_a_node_off_the_network_ends_the_job_naming_it(jobs, record_property):
    # sop-n2's link goes down mid-training, nothing is killed. --no-requeue: the job ends
    # (by default SLURM requeues it, and it resumes on the nodes that are left). The
    # watchdog's allowance is longer than SLURM's bound: SLURM ends the job.
    stall = 3 * LOST_BOUND // 2
    job = jobs('lost', ['train.epochs=100', 'checkpoint.interval=2',
                        'train.stall_timeout={}'.format(stall)],
               ['--nodelist={},{}'.format(N1, N2), '--ntasks-per-node=1', '--cpus-per-task=1',
                '--no-requeue'])
    job.wait(lambda: len(job.checkpoints()) >= 1 or job.info().get('JobState') in FINAL,
             'checkpoint', 240)
    written = job.checkpoints()
    assert written, job.output()
    link(N2, 'down')
    cut = time.monotonic()
    info = job.end(timeout=LOST_BOUND + 60)
    # Over on sop-n1 (the batch shell, srun, the rank there) within the bound.
    wait_until(lambda: N1 not in jobs_left(), LOST_BOUND + 30, 'end on ' + N1)
    seconds = time.monotonic() - cut
    record_property('node_lost', (info['JobState'], round(seconds, 1)))
    print('{} off the network: job over on {} {:.1f} s later'.format(N2, N1, seconds))
    output = job.output()
    assert info['JobState'] == 'NODE_FAIL', output
    assert seconds < LOST_BOUND, (seconds, output)
    named = [line for line in output.splitlines()
             if N2 in line and not line.startswith('ranks:')]
    assert named == ['srun: error: Node failure on ' + N2], output
    # sop-n2 back on the network: what the job left there (its rank, waiting on a peer
    # that is gone; its slurmstepd, waiting to report) ends once slurmd hears from the
    # controller. (Cut off for good, its rank would end by its watchdog.)
    link(N2, 'up')
    wait_until(lambda: not jobs_left(), 120, 'end of the job on every host')
    assert_intact(job.checkpoints())
    assert set(written) <= set(job.checkpoints())
