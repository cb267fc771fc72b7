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

import pytest

from launching import REPO


def python(code, timeout=120):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=timeout)


SIGNAL_TWICE = '''
import os
import signal
import distributed
from distributed.liveness import StopSignal
signum = signal.{}
StopSignal().install()
os.kill(os.getpid(), signum)
print('after the first', flush=True)
os.kill(os.getpid(), signum)
print('after the second', flush=True)
'''


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGINT'])
def test_a_second_signal_of_the_same_kind_ends_the_process_at_once(name):
    # The first only asks for a checkpoint; a second (a user pressing Ctrl-C again, a
    # scheduler insisting) ends the process by that signal, without waiting for one.
    done = python(SIGNAL_TWICE.format(name))
    assert done.returncode == -getattr(signal, name), (done.returncode, done.stderr)
    assert done.stdout == 'after the first\n', done.stdout


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
