"""Jobs across hosts: the launchers on test hosts of their own, with the faults only a
cluster has (a host that dies, one that drops off the network, a host that cannot see a
folder).

The hosts are scripts/testbed/up.sh's (root): network namespaces sop-n1.. with their own
address, host name and mounts, sshd on each, joined by a bridge. mpiexec runs on sop-n1
and reaches the others through real ssh (keep-alives: a silent host is given up after
6 s). UCX_TLS=tcp,self: MPICH's UCX would otherwise carry the ranks' traffic through
shared memory, which crosses network namespaces on one kernel: a cut link then changed
nothing (checked: 50 iterations after the cut), and
test_a_host_off_the_network_with_plain_ssh... fails if it does. Where no test bed is up
(or this is not root), the module is skipped with one line; with REQUIRE_MULTINODE=1
(.ci/run) that is an error instead.
"""
import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy
import pytest

from jobs import TINY
from launching import MPIEXEC, REPO
from prerequisites import require

BED = '/var/lib/sop-testbed'
ON = os.path.join(REPO, 'scripts', 'testbed', 'on')
SSH = os.path.join(BED, 'ssh')
"""ssh with the test bed's keys and keep-alives (plain ssh, as Hydra runs by default)."""
HYDRA_SSH = os.path.join(REPO, 'scripts', 'hydra_ssh')
"""The product's ssh for Hydra, which ends mpiexec when a host is lost."""
LOCAL = os.path.join(BED, 'local')
"""sop-n1 sees this folder; every other test host sees an empty tmpfs of its own there."""
DEADLINE = 30  # seconds from a fault to the whole job being gone, on every host
KEEPALIVE = 6  # seconds: ClientAliveInterval x ClientAliveCountMax of sshd and ssh


def _bed_down():
    """Why no test can run here, or None."""
    if os.geteuid() != 0:
        return 'not root (the tests enter the test hosts\' namespaces)'
    started = os.path.join(BED, 'started')
    if not (os.path.exists(started) and os.path.getsize(started)):
        return 'no test bed is up (no {})'.format(started)
    try:
        done = subprocess.run([ON, 'sop-n1', SSH, 'sop-n2', 'hostname'], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return 'sop-n1 cannot reach sop-n2 within 30 s'
    if done.stdout.strip() != 'sop-n2':
        return 'sop-n1 cannot ssh to sop-n2 ({})'.format(
            (done.stderr.strip() or str(done.returncode)).splitlines()[0])
    return None


require('multinode tests', _bed_down(), 'REQUIRE_MULTINODE',  # .ci/run sets it
        'scripts/testbed/up.sh (root) brings the test hosts up')

pytestmark = pytest.mark.multinode

CORES = len(os.sched_getaffinity(0))
"""The test hosts share this machine's cores: each host has all of them."""


def on(host, *command, **kwargs):
    return subprocess.run([ON, host] + list(command), capture_output=True, text=True,
                          timeout=60, **kwargs)


def listener(host):
    with open(os.path.join(BED, 'n' + host[len('sop-n'):], 'sshd.pid')) as f:
        return int(f.read())


SLURM_DAEMONS = {'slurmctld', 'slurmscriptd', 'slurmd', 'slurmstepd', 'munged', 'srun',
                 'sbatch', 'salloc', 'scancel', 'scontrol', 'squeue', 'sinfo', 'sacct'}
"""The test SLURM cluster's daemons and commands (tests/system/test_slurm.py), which may run on
the same test hosts: neither they nor what they started belong to these tests."""


def on_host(host):
    """{pid: command line} of the processes on ``host`` (in its network namespace) other
    than its sshd listener, which belongs to the test bed, and SLURM's daemons and what
    they started (``SLURM_DAEMONS``)."""
    daemon = listener(host)
    namespace = os.readlink('/proc/{}/ns/net'.format(daemon))
    found, parents, names = {}, {}, {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == daemon:
            continue
        try:
            if os.readlink('/proc/{}/ns/net'.format(entry)) != namespace:
                continue
            with open('/proc/{}/cmdline'.format(entry), 'rb') as f:
                command = f.read().replace(b'\0', b' ').decode(errors='replace')
            with open('/proc/{}/stat'.format(entry)) as f:
                name, fields = f.read().split('(', 1)[1].rsplit(')', 1)
            if fields.split()[0] == 'Z':
                continue
        except OSError:
            continue
        found[int(entry)] = command
        parents[int(entry)], names[int(entry)] = int(fields.split()[1]), name

    def slurm(pid):
        while pid in names:
            if names[pid] in SLURM_DAEMONS:
                return True
            pid = parents[pid]
        return False
    return {pid: command for pid, command in found.items() if not slurm(pid)}


def left_behind(hosts, grace):
    """{host: {pid: command}} still running on ``hosts`` after up to ``grace`` seconds."""
    end = time.monotonic() + grace
    while True:
        left = {host: on_host(host) for host in hosts}
        left = {host: pids for host, pids in left.items() if pids}
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.5)


def link(host, state):
    subprocess.run(['ip', '-n', 'soptb-n' + host[len('sop-n'):], 'link', 'set', 'eth0',
                    state], check=True, timeout=30)


def reconnect(hosts):
    """Every link up, and each host reaching the next by ssh again: the neighbour entries
    that failed while a link was down answer 'No route to host' for seconds after."""
    for host in hosts:
        link(host, 'up')
        subprocess.run(['ip', '-n', 'soptb-n' + host[len('sop-n'):], 'neigh', 'flush', 'all'],
                       check=True, timeout=30)
    end = time.monotonic() + 30
    for host, other in zip(hosts, hosts[1:] + hosts[:1]):
        while on(host, SSH, other, 'true').returncode != 0:
            assert time.monotonic() < end, '{} cannot reach {} again'.format(host, other)
            time.sleep(0.5)


class Job:
    """``mpiexec`` on sop-n1 with ``ppn`` ranks on each of ``hosts``, as on a cluster,
    through ``launcher`` (Hydra's -launcher-exec)."""

    def __init__(self, args, hosts=('sop-n1', 'sop-n2'), ppn=1, launcher=HYDRA_SSH):
        environment = {k: v for k, v in os.environ.items()
                       if k not in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS',
                                    'MKL_NUM_THREADS')}
        environment.update(PYTHONPATH=REPO, UCX_TLS='tcp,self', SOP_SSH=SSH,
                           SOP_SSH_ALIVE_S=str(KEEPALIVE // 3))
        command = [ON, 'sop-n1', MPIEXEC, '-launcher', 'ssh', '-launcher-exec', launcher,
                   '-hosts', ','.join(hosts), '-n', str(ppn * len(hosts)), '-ppn', str(ppn),
                   sys.executable, '-m', 'launch.train'] + list(args)
        self.hosts = hosts
        # nsenter and env exec: this process is mpiexec itself.
        self.proc = subprocess.Popen(command, cwd=REPO, env=environment, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.output = ''

    def finish(self, timeout=300):
        try:
            self.output, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]
            pytest.fail('the job did not end within {} s:\n{}'.format(timeout, self.output))
        return self.proc.returncode, self.output

    def wait_for(self, path, timeout=240):
        end = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail('{} never appeared:\n{}'.format(path, self.finish(30)[1]))
            time.sleep(0.2)


@pytest.fixture
def bed(tiny_sop):
    """A folder of sop-n1's own (``LOCAL``) for the test, and the test hosts as they were
    afterwards: every link up, nothing of the test's left running (killed, and the test
    fails, if it was)."""
    folder = os.path.join(LOCAL, 'test-' + uuid.uuid4().hex[:8])
    os.makedirs(folder)
    yield folder
    hosts = ('sop-n1', 'sop-n2', 'sop-n3')
    reconnect(hosts)
    left = left_behind(hosts, grace=5)  # reconnect's own sshd sessions take a moment
    for pids in left.values():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(folder, ignore_errors=True)
    assert not left, 'processes left on the test hosts: {}'.format(left)


def train_args(root, out, *overrides):
    return (['data.root={}'.format(root), 'out={}'.format(out)] + TINY
            + ['train.log_interval=1'] + list(overrides))


def checkpoints(out):
    return sorted(glob.glob(os.path.join(out, 'snapshot_iter_*.npz')),
                  key=lambda p: int(re.findall(r'\d+', os.path.basename(p))[0]))


def assert_intact(paths):
    """Each checkpoint reads whole (every array of the zip archive)."""
    for path in paths:
        with numpy.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                archive[key]


def assert_nothing_written(host, path):
    """No file under ``path`` for ``host`` (its own mounts): no rank there wrote one.
    (Folders may be there: chainer's ``Trainer.run`` makes its ``out`` on every rank.)"""
    seen = on(host, 'find', path, '-not', '-type', 'd')
    assert seen.stdout == '' and seen.returncode in (0, 1), (host, seen)


def assert_placed(output, ppn):
    """The log names each rank's host; each host's ``ppn`` ranks share its cores."""
    assert 'runtime: {} rank(s) on 2 node(s)'.format(2 * ppn) in output, output
    threads = max(1, CORES // ppn)
    ranks = re.search(r'^ranks: (.*)$', output, re.M)
    assert ranks, output
    placed = re.findall(r'(\d+) pid \d+ on (\S+) \((\S+) threads\)', ranks.group(1))
    assert sorted(placed) == sorted(
        (str(rank), 'sop-n{}'.format(1 + rank // ppn), str(threads))
        for rank in range(2 * ppn)), output


def test_one_rank_on_each_of_two_hosts_trains_to_the_end_and_only_rank_0_writes(
        bed, tiny_sop):
    # out is sop-n1's own folder: sop-n2 cannot see it, and needs not to.
    out = os.path.join(bed, 'out')
    code, output = Job(train_args(tiny_sop, out, 'train.epochs=1')).finish()
    assert code == 0, output
    assert_placed(output, ppn=1)
    for name in ('log', 'model.npz', 'config.yaml'):
        assert os.path.exists(os.path.join(out, name)), (name, output)
    assert_nothing_written('sop-n2', bed)


def test_two_ranks_on_each_host_checkpoint_and_resume_where_one_cannot_see_out(bed, tiny_sop):
    # Every rank's state (its iterator's position, its sums for the log) is in the
    # checkpoint that rank 0 writes and reads: the ranks on sop-n2 get theirs through MPI.
    out = os.path.join(bed, 'out')
    code, output = Job(train_args(tiny_sop, out, 'train.epochs=1'), ppn=2).finish()
    assert code == 0, output
    assert_placed(output, ppn=2)
    written = checkpoints(out)
    assert written, output
    again = Job(train_args(tiny_sop, out, 'train.epochs=2', 'resume=auto'), ppn=2)
    code, output = again.finish()
    assert code == 0, output
    assert 'resumed from {}'.format(written[-1]) in output, output
    assert_nothing_written('sop-n2', bed)


def test_data_root_missing_on_one_host_stops_every_rank_naming_host_and_path(bed, tiny_sop):
    root = os.path.join(bed, 'sop')  # on sop-n1 only
    shutil.copytree(tiny_sop, root)
    began = time.monotonic()
    job = Job(train_args(root, os.path.join(bed, 'out'), 'train.epochs=1'))
    code, output = job.finish(timeout=120)
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    assert code == 2, output
    assert len(errors) == 1 and 'sop-n2' in errors[0] and root in errors[0], output
    assert 'skipping unreadable image' not in output, output
    assert time.monotonic() - began < 60, output


def _until_checkpoint(bed, tiny_sop, *overrides, **kwargs):
    out = os.path.join(bed, 'out')
    job = Job(train_args(tiny_sop, out, 'train.epochs=100', 'checkpoint.interval=2',
                         *overrides), **kwargs)
    job.wait_for(os.path.join(out, 'snapshot_iter_2.npz'))
    return job, out


def test_a_host_whose_processes_all_die_ends_the_job(bed, tiny_sop, record_property):
    job, out = _until_checkpoint(bed, tiny_sop)
    victims = on_host('sop-n2')
    assert any('launch.train' in command for command in victims.values()), victims
    killed = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    code, output = job.finish(timeout=DEADLINE + 60)
    seconds = time.monotonic() - killed
    record_property('host_died', (code, round(seconds, 1)))
    assert code != 0 and seconds < DEADLINE, (code, seconds, output)
    assert [line for line in output.splitlines()
            if 'sop-n2' in line and not line.startswith('ranks:')], output
    assert left_behind(job.hosts, grace=DEADLINE) == {}
    assert checkpoints(out)
    assert_intact(checkpoints(out))


@pytest.mark.parametrize('phase', ['training', 'start-up'])
def test_a_host_off_the_network_ends_the_job_within_the_keepalive(
        bed, tiny_sop, phase, record_property):
    # Nothing is killed: sop-n2's link goes down, mid-training or while its rank starts.
    # scripts/hydra_ssh: ssh gives the host up after its keep-alives and ends mpiexec,
    # which would wait for that host's proxy for ever (before any watchdog fires: the
    # allowances here are far longer).
    out = os.path.join(bed, 'out')
    stall = 60
    args = train_args(tiny_sop, out, 'train.epochs=100', 'checkpoint.interval=2',
                      'train.stall_timeout={}'.format(stall),
                      'train.startup_timeout={}'.format(stall))
    job = Job(args)
    if phase == 'training':
        job.wait_for(os.path.join(out, 'snapshot_iter_2.npz'))
    else:
        end = time.monotonic() + 120
        while not any('launch.train' in c for c in on_host('sop-n2').values()):
            assert job.proc.poll() is None and time.monotonic() < end, job.finish(30)
            time.sleep(0.05)
    link('sop-n2', 'down')
    cut = time.monotonic()
    code, output = job.finish(timeout=stall + DEADLINE)
    seconds = time.monotonic() - cut
    record_property('link_down_' + phase, (code, round(seconds, 1)))
    # 130: the ranks here aborted the job at scripts/hydra_ssh's second SIGINT; SIGKILL: it
    # killed mpiexec where they could not (in MPI's start-up; -9 here, mpiexec being this
    # process's child; 137 in a shell). Hydra's own Ctrl-C ending gave 0 or 255.
    assert code in (130, -signal.SIGKILL), (code, output)
    assert seconds < KEEPALIVE + DEADLINE, (seconds, output)
    lost = [line for line in output.splitlines() if 'sop-n2 lost' in line]
    assert len(lost) == 1 and lost[0].startswith('error: host sop-n2 lost'), output
    # sop-n2's ranks end by their own watchdogs (the fallback's 30 s after the start-up
    # allowance, in MPI's start-up), its sshd session after the keep-alives.
    assert left_behind(job.hosts, grace=stall + 30 + DEADLINE) == {}
    assert_intact(checkpoints(out) if phase == 'training' else [])


STALL = 40
"""train.stall_timeout of the jobs that lose a host: the first iterations take up to 12 s
on 2 busy cores; the lost host's rank ends by its watchdog after it."""


def _lost_host_ends_the_job(job, cut, record_property, name):
    """The job ended after sop-n2's link went down at ``cut`` (monotonic seconds), by
    scripts/hydra_ssh, naming the host in one line, and nothing of it is left anywhere:
    sop-n2's rank ends by its watchdog (``STALL``; its MPI_Abort cannot reach the others
    and gives up after ``liveness.ABORT_WAIT_S``), its proxy with it."""
    code, output = job.finish(timeout=60 + DEADLINE)
    seconds = time.monotonic() - cut
    record_property(name, (code, round(seconds, 1)))
    assert code == 130 and seconds < KEEPALIVE + DEADLINE, (code, seconds, output)
    lost = [line for line in output.splitlines() if 'sop-n2 lost' in line]
    assert len(lost) == 1 and lost[0].startswith('error: host sop-n2 lost'), output
    assert left_behind(job.hosts, grace=STALL + 10 + DEADLINE) == {}
    return output


def test_a_host_off_the_network_during_a_checkpoint_write(bed, tiny_sop, record_property):
    # The link goes down once rank 0 has begun writing a checkpoint (chainer's temporary
    # folder is there). Rank 0's write needs no other host: the checkpoint is complete,
    # or only a temporary folder is left, which a resume never takes.
    out = os.path.join(bed, 'out')
    job = Job(train_args(tiny_sop, out, 'train.epochs=100', 'checkpoint.interval=2',
                         'train.stall_timeout={}'.format(STALL)))
    end = time.monotonic() + 240
    while not any(name.startswith('tmp') for name in
                  (os.listdir(out) if os.path.isdir(out) else [])):
        assert job.proc.poll() is None and time.monotonic() < end, job.finish(30)
        time.sleep(0.002)
    link('sop-n2', 'down')
    cut = time.monotonic()
    _lost_host_ends_the_job(job, cut, record_property, 'link_down_checkpoint')
    written = checkpoints(out)
    assert written, os.listdir(out)
    assert_intact(written)
    reconnect(job.hosts)
    again = Job(train_args(tiny_sop, out, 'train.epochs=1', 'checkpoint.interval=2',
                           'resume=auto'))
    code, output = again.finish()
    assert code == 0 and 'resumed from {}'.format(written[-1]) in output, output


def test_a_host_off_the_network_during_evaluation(bed, tiny_sop, record_property):
    # data.root is a folder of each host's own (bed), a copy on each. The test images of
    # both copies are held by write leases of this process: a rank's first open of one, in
    # the first evaluation, waits for the lease, which says the evaluation is under way.
    # Then sop-n2's link goes down and the leases go, and the ranks evaluate on. (With
    # sop-n2's copy alone, one run in three saw no open there: why is not known.)
    root = os.path.join(bed, 'sop')
    shutil.copytree(tiny_sop, root)
    there = '/proc/{}/root{}'.format(listener('sop-n2'), root)  # sop-n2's own folder
    shutil.copytree(tiny_sop, there)
    with open(os.path.join(root, 'Ebay_test.txt')) as f:
        images = [line.split()[3] for line in f.read().splitlines()[1:]]
    previous = signal.signal(signal.SIGIO, lambda *_: None)  # a lease broken: SIGIO
    held = [os.open(os.path.join(folder, image), os.O_RDONLY)
            for folder in (root, there) for image in images]
    try:
        for fd in held:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        out = os.path.join(bed, 'out')
        job = Job(train_args(root, out, 'train.epochs=100', 'checkpoint.interval=2',
                             'train.stall_timeout={}'.format(STALL)))
        end = time.monotonic() + 240
        while all(fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK for fd in held):
            assert job.proc.poll() is None and time.monotonic() < end, job.finish(30)
            time.sleep(0.005)
        link('sop-n2', 'down')
        cut = time.monotonic()
    finally:
        for fd in held:
            os.close(fd)  # the lease goes with the file
        signal.signal(signal.SIGIO, previous)
    output = _lost_host_ends_the_job(job, cut, record_property, 'link_down_evaluation')
    # The cut came in the evaluation at the end of epoch 0 (iteration 3): iteration 2 was
    # logged, iteration 3's line (with the test loss) never was.
    assert re.search(r'^0\s+2\s', output, re.M), output
    assert not re.search(r'^\d+\s+3\s', output, re.M), output
    assert checkpoints(out) == [os.path.join(out, 'snapshot_iter_2.npz')], output
    assert_intact(checkpoints(out))


def test_a_host_off_the_network_with_plain_ssh_ends_at_the_stall_timeout(bed, tiny_sop,
                                                                         record_property):
    # With plain ssh, Hydra's mpiexec ends only because the watchdog aborts the job
    # (MPI_Abort) after train.stall_timeout: a rank that merely exited left it waiting
    # for sop-n2's proxy for ever.
    stall = 25  # the first iterations take up to 12 s on 2 busy cores
    job, out = _until_checkpoint(bed, tiny_sop, 'train.stall_timeout={}'.format(stall),
                                 launcher=SSH)
    link('sop-n2', 'down')
    cut = time.monotonic()
    code, output = job.finish(timeout=stall + DEADLINE + 60)
    seconds = time.monotonic() - cut
    record_property('link_down_plain_ssh', (code, round(seconds, 1)))
    assert code == 4 and seconds < stall + DEADLINE, (code, seconds, output)
    assert 'made no progress for' in output and 'train.stall_timeout' in output, output
    assert left_behind(job.hosts, grace=stall + KEEPALIVE + DEADLINE) == {}
    assert checkpoints(out)
    assert_intact(checkpoints(out))


def test_a_host_off_the_network_in_mpi_start_up_with_plain_ssh_ends_at_the_start_up_timeout(
        bed, tiny_sop, record_property):
    # With plain ssh nothing watches the link, and a rank in MPI_Init holds Python's lock:
    # mpiexec waited for ever. The start-up guard of rank 0 (waiting in MPI_Init for
    # sop-n2's rank) asks Hydra to abort the job at train.startup_timeout.
    startup = 20
    job = Job(train_args(tiny_sop, os.path.join(bed, 'out'), 'train.epochs=1',
                         'train.startup_timeout={}'.format(startup),
                         'train.stall_timeout={}'.format(startup)), launcher=SSH)
    began = time.monotonic()
    while not any('launch.train' in c for c in on_host('sop-n2').values()):
        assert job.proc.poll() is None and time.monotonic() - began < 60, job.finish(30)
        time.sleep(0.05)
    link('sop-n2', 'down')
    code, output = job.finish(timeout=startup + DEADLINE + 60)
    seconds = time.monotonic() - began
    record_property('link_down_mpi_start_up_plain_ssh', (code, round(seconds, 1)))
    assert code == 4 and seconds < startup + DEADLINE, (code, seconds, output)
    assert re.search(r"^error: rank 0 \(pid \d+ on sop-n1\) is still in MPI's start-up after "
                     r"{} s".format(startup), output, re.M), output
    # sop-n2's rank ends by its watchdog's fallback (30 s after the allowance).
    assert left_behind(job.hosts, grace=startup + 30 + DEADLINE) == {}


def test_a_host_off_the_network_at_start_up_ends_the_job(bed, tiny_sop):
    link('sop-n2', 'down')
    began = time.monotonic()
    job = Job(train_args(tiny_sop, os.path.join(bed, 'out'), 'train.epochs=1'))
    code, output = job.finish(timeout=DEADLINE + 60)
    assert code != 0 and time.monotonic() - began < DEADLINE, (code, output)
    assert 'sop-n2' in output, output
    assert left_behind(job.hosts, grace=DEADLINE) == {}


def _in_mpi(pid):
    """Whether process ``pid`` has loaded MPI's library (its ``MPI_Init`` is under way)."""
    try:
        with open('/proc/{}/maps'.format(pid)) as f:
            return 'libmpi' in f.read()
    except OSError:
        return False


@pytest.mark.parametrize('when', ['before MPI', 'in MPI start-up'])
def test_a_rank_that_never_gets_through_mpi_start_up_ends_the_job(
        bed, tiny_sop, when, record_property):
    # sop-n2's rank is stopped (SIGSTOP) as soon as it runs, or once it has loaded MPI:
    # rank 0 waits in MPI_Init for ever, holding Python's lock, and a rank that merely
    # exited (the watchdog's fallback, 30 s later) left mpiexec waiting for sop-n2's proxy.
    # liveness.StartupGuard asks Hydra to abort the job at train.startup_timeout.
    startup = 20
    out = os.path.join(bed, 'out')
    job = Job(train_args(tiny_sop, out, 'train.epochs=1',
                         'train.startup_timeout={}'.format(startup)))
    began = time.monotonic()
    ready = (lambda pid: True) if when == 'before MPI' else _in_mpi
    while True:
        ranks = [pid for pid, command in on_host('sop-n2').items()
                 if 'launch.train' in command and 'hydra_pmi_proxy' not in command
                 and ready(pid)]
        if ranks:
            break
        assert job.proc.poll() is None and time.monotonic() - began < 60, job.finish(30)
        time.sleep(0.01)
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    code, output = job.finish(timeout=startup + DEADLINE + 60)
    seconds = time.monotonic() - began
    record_property('stopped_' + when.replace(' ', '_'), (code, round(seconds, 1)))
    assert code == 4 and seconds < startup + DEADLINE, (code, seconds, output)
    # One line from each rank still in MPI's start-up: rank 0, and where sop-n2's rank was
    # stopped inside MPI_Init, its guard (a process of its own, not stopped) too.
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    said = sorted(re.findall(r"^error: rank (\d) \(pid \d+ on (sop-n\d)\) is still in MPI's "
                             r"start-up after {} s".format(startup), output, re.M))
    expected = [('0', 'sop-n1')] + ([('1', 'sop-n2')] if when == 'in MPI start-up' else [])
    assert said[:1] == expected[:1] and set(said) <= set(expected), output
    assert len(errors) == len(said), output
    # Hydra killed the stopped rank too; nothing of the job is left on either host.
    assert left_behind(job.hosts, grace=DEADLINE) == {}
    assert_nothing_written('sop-n1', out)


def test_sigterm_to_mpiexec_with_ranks_on_both_hosts_checkpoints_once(bed, tiny_sop):
    job, out = _until_checkpoint(bed, tiny_sop)
    before = checkpoints(out)
    job.proc.send_signal(signal.SIGTERM)
    code, output = job.finish(timeout=DEADLINE + 60)
    assert code == 143, output
    assert 'stopped by SIGTERM' in output, output
    after = checkpoints(out)
    assert len(after) == len(before) + 1 or after[-1] not in before, (before, after, output)
    assert_intact(after)
    assert left_behind(job.hosts, grace=DEADLINE) == {}


def test_a_host_lost_after_a_checkpoint_resumes_on_the_surviving_host(bed, tiny_sop, tmp_path,
                                                                      record_property):
    # A node is lost: every process on sop-n2 killed once the first checkpoint is written
    # (the job ends, Hydra naming the host). The run goes on with one rank on sop-n1, which
    # holds out: train.chunks stays 2 (the checkpoint's), that rank accumulates both chunks,
    # and every later step sees the uninterrupted run's images and lr (24 images, 2 chunks
    # of 4: 3 global batches per epoch, a checkpoint at each epoch's end).
    from runs import assert_follows, train
    overrides = ('train.epochs=3', 'train.log_interval=1')
    out = os.path.join(bed, 'out')
    job = Job(train_args(tiny_sop, out, *overrides))
    job.wait_for(os.path.join(out, 'snapshot_iter_3.npz'))
    victims = on_host('sop-n2')
    assert any('launch.train' in command for command in victims.values()), victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    code, output = job.finish(timeout=DEADLINE + 60)
    assert code != 0, output
    assert 'runtime: 2 rank(s) on 2 node(s)' in output, output
    written = checkpoints(out)
    assert written and written[-1] != os.path.join(out, 'snapshot_iter_9.npz'), output
    assert_intact(written)
    assert left_behind(job.hosts, grace=DEADLINE) == {}

    # A plain launch on the surviving host: mpiexec there, one rank.
    environment = dict(PYTHONPATH=REPO, UCX_TLS='tcp,self', OMP_NUM_THREADS=str(CORES))
    resumed = subprocess.run(
        [ON, 'sop-n1', 'env'] + ['{}={}'.format(k, v) for k, v in environment.items()]
        + [MPIEXEC, '-n', '1', sys.executable, '-m', 'launch.train']
        + train_args(tiny_sop, out, *overrides, 'resume=auto'),
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert 'resumed from {} at iteration'.format(written[-1]) in resumed.stdout, resumed.stdout
    assert 'on 1 rank;' in resumed.stdout, resumed.stdout
    assert 'runtime: 1 rank(s) on 1 node(s)' in resumed.stdout, resumed.stdout

    # The uninterrupted run: one rank on this machine accumulating the same 2 chunks.
    straight = tmp_path / 'straight'
    train(tiny_sop, straight, 1, 'train.chunks=2', *overrides)
    first = int(re.findall(r'\d+', os.path.basename(written[-1]))[0])
    record_property('resumed_at_iteration', first)
    assert_follows(straight, type(straight)(out), range(first + 1, 10))
