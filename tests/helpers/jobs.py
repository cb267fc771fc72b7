"""Jobs of 2 MPI ranks as users run them: start, signal one rank or mpiexec, read the
output with a deadline, and check how the job ended."""
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from launching import MPIEXEC, REPO, descendants, process_tree

# PYTHONPATH: a script run by path imports this tree's package, not an installed copy.
ENV = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', MKL_NUM_THREADS='1',
           PYTHONPATH=REPO)
TINY = ['data.crop_size=32', 'data.scale_size=36', 'data.loader=serial', 'train.batch_size=4',
        'train.progress=false', 'optimizer.lr=0.01', 'optimizer.warmup_epochs=0',
        'device=cpu', 'model.arch=resnet50']
"""Overrides for a ResNet-50 job that a 2-core CPU runs in seconds per epoch."""
DEADLINE = 60  # seconds from a failure or a signal to the whole job being gone


def start(args, **kwargs):
    return subprocess.Popen([MPIEXEC, '-n', '2', sys.executable] + args, cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def train(root, out, *overrides):
    return start(['-m', 'launch.train', 'data.root={}'.format(root), 'out={}'.format(out)]
                 + TINY + list(overrides))


def finish(proc, timeout=300):
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail('the job hung for {} s:\n{}'.format(timeout, output))
    return proc.returncode, output


def wait_for(path, proc, timeout=240):
    end = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > end:
            pytest.fail('{} never appeared:\n{}'.format(path, finish(proc)[1]))
        time.sleep(0.2)


def rank_pids(mpiexec_pid):
    """{rank: pid} of the ranks under ``mpiexec_pid``, from /proc: the rank variable the
    launcher put in each one's environment (Hydra's PMI_RANK, Open MPI's)."""
    ranks = {}
    for pid in descendants(process_tree(), mpiexec_pid):
        try:
            with open('/proc/{}/environ'.format(pid), 'rb') as f:
                env = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
        except OSError:
            continue
        for name in (b'PMI_RANK', b'OMPI_COMM_WORLD_RANK'):
            if name in env:
                ranks.setdefault(int(env[name]), pid)  # the rank, not a child of it
                break
    return ranks


def assert_stopped_by(signum, code, output):
    """The ranks exit with 128 + signal; Hydra (MPICH) passes that on as the job's exit
    status, Open MPI's mpiexec reports a failed job as 1. Non-zero either way."""
    if 'MPI: MPICH' in output:
        assert code == 128 + signum, output
    else:
        assert code != 0, output
    assert 'stopped by {}'.format(signal.Signals(signum).name) in output, output


def read_until(proc, text, timeout=240):
    """The job's output up to ``text``, read with a deadline: when the job ends or goes
    quiet before printing it, the test fails showing the output (and the job is killed)
    instead of waiting for ever on a line that never comes."""
    seen = b''
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while text.encode() not in seen:
            left = end - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                output = seen.decode(errors='replace') + proc.communicate()[0]
                pytest.fail('no {!r} within {} s:\n{}'.format(text, timeout, output))
            if selector.select(min(left, 1.0)):
                # Unbuffered, so that nothing is left in proc.stdout's buffer for finish.
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    pytest.fail('the job ended before printing {!r}:\n{}'.format(
                        text, seen.decode(errors='replace') + finish(proc)[1]))
                seen += chunk
    return seen.decode(errors='replace')


class Processes:
    """Every process seen under a job while it runs (``look`` adds what is there now),
    so that what is left of it after it ended can be named."""

    def __init__(self, proc):
        self.proc = proc
        self.seen = {}

    def look(self):
        tree = process_tree()
        for pid in descendants(tree, self.proc.pid)[1:]:
            self.seen.setdefault(pid, tree[pid][1])
        return tree

    def left(self, grace=5.0):
        """{pid: command line} of the seen processes still running ``grace`` seconds after
        the job's end (zombies, reaped by nobody yet, do not count)."""
        end = time.monotonic() + grace
        while True:
            alive = {pid: command for pid, command in self.seen.items() if running(pid)}
            if not alive or time.monotonic() > end:
                return alive
            time.sleep(0.2)


def running(pid):
    try:
        with open('/proc/{}/stat'.format(pid)) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def poll_until(proc, condition, processes=None, timeout=240, every=0.02):
    """Call ``condition()`` every ``every`` seconds until it is true; fail (showing the
    output) if the job ends first or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while not condition():
        if processes:
            processes.look()
        if proc.poll() is not None or time.monotonic() > end:
            pytest.fail('the awaited moment never came:\n{}'.format(finish(proc)[1]))
        time.sleep(every)
