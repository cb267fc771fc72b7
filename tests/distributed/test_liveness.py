"""distributed.liveness: stop signals, the stall watchdog, loader workers and signals.

Each case runs in a fresh interpreter: the watchdog ends its process, and signal
dispositions and masks must not leak into pytest.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy
import pytest

from launching import REPO


def python(code, timeout=120):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=timeout)


SIGNAL_AGAIN = '''
import os
import signal
import time
import distributed
from distributed.liveness import StopSignal
signum = signal.{}
StopSignal(repeat_window=1.0).install()
os.kill(os.getpid(), signum)
print('after the first', flush=True)
os.kill(os.getpid(), signum)   # the same stop passed on twice (mpiexec and pkill)
print('after the repeat', flush=True)
time.sleep(1.2)
os.kill(os.getpid(), signum)
time.sleep(2)
print('after the second', flush=True)
'''


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGINT'])
def test_a_second_signal_ends_the_process_at_once_and_a_repeat_does_not(name):
    # The first only asks for a checkpoint. A repeat within the window is the same stop
    # passed on twice; a second one later (a user pressing Ctrl-C again, a scheduler
    # insisting) ends the process at once, exit 128 + signal, without a checkpoint.
    done = python(SIGNAL_AGAIN.format(name))
    assert done.returncode == 128 + getattr(signal, name), (done.returncode, done.stderr)
    assert done.stdout == 'after the first\nafter the repeat\n', done.stdout
    assert '{} again, 1 s after the first: ending at once'.format(name) in done.stderr


IN_C_CODE = '''
import ctypes
import os
import signal
import threading
import time
import distributed
from distributed.liveness import StopSignal
StopSignal(repeat_window=1.0).install()
signum = signal.{}
def send():
    os.kill(os.getpid(), signum)
    time.sleep(1.5)
    os.kill(os.getpid(), signum)
threading.Thread(target=send).start()
# The main thread in C code that does not return on a signal, as in an MPI collective
# waiting for a stopped peer: no Python-level handler runs until it returns. Here it
# locks a mutex it holds already, which waits for ever (and releases Python's lock).
libc = ctypes.CDLL(None)
mutex = ctypes.create_string_buffer(64)   # zeros: PTHREAD_MUTEX_INITIALIZER
libc.pthread_mutex_lock(mutex)
libc.pthread_mutex_lock(mutex)
print('the main thread came back', flush=True)
'''


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGINT'])
def test_a_second_signal_ends_the_process_while_the_main_thread_waits_in_c_code(name):
    started = time.monotonic()
    done = python(IN_C_CODE.format(name), timeout=30)
    assert done.returncode == 128 + getattr(signal, name), (done.returncode, done.stderr)
    assert 'came back' not in done.stdout and time.monotonic() - started < 15, done.stdout


def test_the_watchdog_fires_after_the_timeout_naming_rank_and_last_progress():
    began = time.monotonic()
    done = python('''
        import time
        from distributed.liveness import Watchdog
        watchdog = Watchdog(timeout=1.5, startup_timeout=30).start()
        for i in range(1, 6):          # progress every 0.5 s: no alarm
            time.sleep(0.5)
            watchdog.progress('iteration {}'.format(i))
        print('made progress', flush=True)

        def stuck_in_a_collective():
            time.sleep(60)
        stuck_in_a_collective()
        print('never')
    ''')
    seconds = time.monotonic() - began
    assert done.returncode == 4, (done.returncode, done.stderr)
    assert done.stdout == 'made progress\n'
    assert 'rank 0 (pid' in done.stderr and 'last done: iteration 5' in done.stderr
    assert 'train.stall_timeout' in done.stderr
    assert 'stuck_in_a_collective' in done.stderr  # every thread's stack follows
    assert 'stall-watchdog' in done.stderr or 'Thread 0x' in done.stderr
    assert seconds < 30


def test_start_up_has_its_own_allowance():
    done = python('''
        import time
        from distributed.liveness import Watchdog
        watchdog = Watchdog(timeout=60, startup_timeout=1).start()
        time.sleep(30)
    ''')
    assert done.returncode == 4, done.stderr
    assert 'last done: start-up' in done.stderr and 'train.startup_timeout' in done.stderr


def test_a_stall_that_holds_the_interpreter_lock_still_ends_the_process():
    # The watchdog's thread cannot run while another thread holds the GIL; faulthandler's
    # fallback needs no lock. A regular expression with catastrophic backtracking holds
    # the GIL for far longer than the test waits.
    began = time.monotonic()
    done = python('''
        import re
        from distributed.liveness import Watchdog
        Watchdog(timeout=1, startup_timeout=1, grace=2).start()
        import time
        time.sleep(0.2)   # the watchdog arms its fallback
        re.match(r'(a+)+$', 'a' * 64 + 'b')
    ''')
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert 'Timeout (0:00:0' in done.stderr and 'in match' in done.stderr, done.stderr
    assert time.monotonic() - began < 60


def test_a_stopped_watchdog_does_not_fire():
    done = python('''
        import time
        from distributed.liveness import Watchdog
        watchdog = Watchdog(timeout=1, startup_timeout=1, grace=1).start()
        watchdog.stop()
        time.sleep(4)
        print('done')
    ''')
    assert done.returncode == 0 and done.stdout == 'done\n', done.stderr


def test_zero_disables_the_watchdog():
    done = python('''
        import time
        from distributed.liveness import Watchdog
        watchdog = Watchdog(timeout=0, startup_timeout=0, grace=1).start()
        time.sleep(3)
        print('done')
    ''')
    assert done.returncode == 0 and done.stdout == 'done\n', done.stderr


LOADER_WORKERS = '''
import os
import signal
import time
import distributed
import chainer
import numpy
from distributed import runtime


def alive(pid):
    try:
        with open('/proc/{}/stat'.format(pid)) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def main():
    runtime._start_forkserver()
    data = [numpy.full(3, i, numpy.float32) for i in range(64)]
    it = chainer.iterators.MultiprocessIterator(data, 4, n_processes=2)
    next(it)
    workers = [p.pid for p in it._prefetch_loop._pool._pool]
    for pid in workers:
        os.kill(pid, signal.SIGTERM)        # as a launcher signals a whole process group
    time.sleep(1)
    print('alive after SIGTERM', sum(alive(pid) for pid in workers), flush=True)
    print('batches', len([next(it) for _ in range(20)]), flush=True)
    it.finalize()                           # and the workers end when asked
    time.sleep(0.5)
    print('alive after finalize', sum(alive(pid) for pid in workers), flush=True)


if __name__ == '__main__':
    main()
'''


def test_loader_workers_outlive_the_jobs_signals_and_end_when_finalized(tmp_path):
    # A script file, as launch.train is a module: the forkserver imports it (and with it
    # distributed's shims) before it forks a worker.
    script = tmp_path / 'loader.py'
    script.write_text(LOADER_WORKERS)
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          env=dict(os.environ, PYTHONPATH=REPO), text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        'alive after SIGTERM 2', 'batches 20', 'alive after finalize 0'], done.stdout


# Jobs of 2 ranks with the default loader (worker processes), through the real launcher.
LOADER = ['data.loader=multiprocess', 'data.workers=1']


def workers_per_rank(processes):
    """The most loader workers (forkserver children) any rank has now."""
    tree = processes.look()
    servers = [pid for pid, (_, command) in tree.items() if pid in processes.seen
               and 'multiprocessing.forkserver' in command
               and 'forkserver' not in tree.get(tree[pid][0], (0, ''))[1]]
    return max([sum(1 for parent, _ in tree.values() if parent == server)
                for server in servers] or [0])


def checkpoint_named(output):
    return output.split('; checkpoint ')[1].split(';')[0]


@pytest.mark.slow
@pytest.mark.parametrize('phase, signum, target', [
    ('start-up', signal.SIGTERM, 'mpiexec'),
    ('training', signal.SIGINT, 'rank 1'),
    # As SLURM delivers it: to every process of the job, loader workers included.
    ('training', signal.SIGTERM, 'every process'),
    # As `pkill -f launch.train` does: mpiexec (which passes it on) and the ranks.
    ('training', signal.SIGTERM, 'mpiexec and the ranks'),
    # As Hydra delivers it: to the rank's process group (its loader workers are in it).
    ('evaluation', signal.SIGTERM, 'rank 0 group'),
    ('checkpoint write', signal.SIGTERM, 'mpiexec'),
])
def test_a_signal_in_any_phase_stops_the_job_with_one_checkpoint(
        phase, signum, target, tiny_sop, tmp_path, record_property):
    from jobs import (DEADLINE, Processes, assert_stopped_by, finish, poll_until, rank_pids,
                      read_until, train)
    out = tmp_path / 'out'
    overrides = LOADER + ['train.epochs=30', 'checkpoint.interval=2']
    if phase == 'evaluation':
        # Every epoch, one image per batch: evaluations take a while and start visibly,
        # when the test iterator's pool forks its worker.
        overrides += ['train.eval_batch_size=1']
    proc = train(tiny_sop, out, *overrides)
    processes = Processes(proc)
    head = ''
    if phase == 'start-up':
        head = read_until(proc, 'runtime:')  # MPI is up; data, model, loader still to come
    elif phase == 'training':
        poll_until(proc, lambda: (out / 'snapshot_iter_2.npz').exists(), processes)
    elif phase == 'evaluation':
        poll_until(proc, lambda: workers_per_rank(processes) >= 2, processes, every=0.05)
    else:
        poll_until(proc, lambda: out.exists() and any(
            p.name.startswith('tmpsnapshot') for p in out.iterdir()), processes, every=0.01)
    processes.look()
    ranks = rank_pids(proc.pid)
    sent = time.monotonic()
    if target == 'mpiexec':
        os.kill(proc.pid, signum)
    elif target == 'mpiexec and the ranks':
        os.kill(proc.pid, signum)
        for pid in ranks.values():
            os.kill(pid, signum)
    elif target == 'every process':
        for pid in processes.seen:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # a short-lived one (a fork about to exec) is gone
                pass
    elif target.endswith('group'):
        os.killpg(os.getpgid(ranks[int(target.split()[1])]), signum)
    else:
        os.kill(ranks[int(target.split()[1])], signum)
    code, output = finish(proc, timeout=DEADLINE * 2)
    output = head + output
    seconds = time.monotonic() - sent
    record_property(phase, (code, round(seconds, 1)))
    assert_stopped_by(signum, code, output)
    assert seconds < DEADLINE, output
    assert output.count('stopped by') == 1 and 'Traceback' not in output, output
    # The checkpoint named is complete: a later resume starts from it.
    named = checkpoint_named(output)
    stopped_at = int(output.split(' at iteration ')[-1].split(';')[0])
    assert named.endswith('snapshot_iter_{}.npz'.format(stopped_at)), output
    with numpy.load(named) as archive:
        assert int(archive['updater/iteration']) == stopped_at
    assert not [p for p in out.iterdir() if p.name.startswith('tmp')]
    assert processes.left() == {}, 'processes of the job left behind'
    if phase == 'start-up':
        assert stopped_at == 1, output   # the first iteration ends start-up
        # ... and its checkpoint resumes (it held no optimizer state: ChainerMN's first
        # update only broadcast the weights).
        code, output = finish(train(tiny_sop, out, *overrides[:-2], 'train.epochs=1',
                                    'resume=auto'))
        assert code == 0 and 'resumed from {} at iteration 1'.format(named) in output, output


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_with_the_stacks_of_the_others(tiny_sop, tmp_path,
                                                                   record_property):
    # A rank that stops making progress without dying (a hung driver, a stuck file system;
    # here SIGSTOP): the other rank waits in a collective until its watchdog fires.
    from jobs import DEADLINE, Processes, finish, poll_until, rank_pids, train
    out = tmp_path / 'out'
    timeout = 20
    proc = train(tiny_sop, out, *LOADER, 'train.epochs=100', 'checkpoint.interval=2',
                 'train.stall_timeout={}'.format(timeout))
    processes = Processes(proc)
    poll_until(proc, lambda: (out / 'snapshot_iter_2.npz').exists(), processes)
    processes.look()
    stopped = rank_pids(proc.pid)[1]
    sent = time.monotonic()
    os.kill(stopped, signal.SIGSTOP)
    code, output = finish(proc, timeout=timeout + DEADLINE + 60)
    seconds = time.monotonic() - sent
    record_property('sigstop', (code, round(seconds, 1)))
    assert code != 0, output
    if 'MPI: MPICH' in output:
        assert code == 4, output
    assert seconds < timeout + DEADLINE, output
    assert 'rank 0 (pid' in output and 'made no progress for' in output, output
    assert 'last done: iteration' in output or 'last done: an evaluation batch' in output
    assert 'Stacks of its threads follow' in output and 'most recent call first' in output
    assert 'File "' in output.split('Stacks of its threads follow')[1]
    assert processes.left() == {}, 'processes of the job left behind'


@pytest.mark.parametrize('at, stopped', [(5, None), (3, signal.SIGTERM)])
def test_a_signal_at_the_last_iteration_leaves_a_finished_run_finished(tmp_path, at, stopped):
    # At the last iteration the run is complete: it ends as finished (exit 0), not as
    # stopped by the signal (it was reported as stopped, with exit 143).
    from toy_trainer import make_trainer, run
    trainer, _ = make_trainer(tmp_path, 5, interval=0)

    def signal_at(trainer):
        if trainer.updater.iteration == at:
            os.kill(os.getpid(), signal.SIGTERM)
    trainer.extend(signal_at, trigger=(1, 'iteration'))
    run(trainer)
    checkpointer = trainer.get_extension('checkpointer')
    assert checkpointer.stopped_by == stopped
    assert trainer.updater.iteration == at
    assert (tmp_path / 'snapshot_iter_{}.npz'.format(at)).exists()


def test_a_rank_that_never_reaches_mpi_start_up_ends_the_job_at_the_start_up_allowance():
    # Rank 1 never gets to MPI_Init (it sleeps before it); rank 0 waits there, holding
    # Python's lock, so its watchdog cannot act: its start-up guard asks Hydra to abort
    # the job, which kills rank 1 too. (Before, rank 0 exited alone 30 s later, and
    # mpiexec waited for rank 1.)
    from launching import MPIEXEC
    code = textwrap.dedent('''
        import os
        import time
        from distributed.liveness import Watchdog
        if os.environ['PMI_RANK'] == '1':
            time.sleep(120)
        Watchdog(timeout=60, startup_timeout=3).start()
        from mpi4py import MPI
        print('MPI is up', flush=True)
    ''')
    began = time.monotonic()
    done = subprocess.run([MPIEXEC, '-n', '2', sys.executable, '-c', code], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=90)
    seconds = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 4 and seconds < 20, (done.returncode, seconds, output)
    assert "error: rank 0 (pid " in output and "is still in MPI's start-up after 3 s" in output
    assert 'MPI is up' not in output
