"""A job ends, whatever happens to one of its ranks: stop signals and the stall watchdog.

``StopSignal`` turns SIGTERM and SIGINT into a request that the ranks agree on at the end
of an iteration (``checkpoint.extension.Checkpointer``), so that a pre-empted job writes a
checkpoint and exits with 128 + the signal number. ``Watchdog`` ends a rank that has made
no progress for too long (a hung GPU or driver, a stuck network file system, a peer stopped
or deadlocked, an MPI start-up that never returns): it writes the stacks of every thread
with the rank and what it last did, and exits, and the launcher takes the rest of the job
down, as it does for any rank that fails (PyTorch's process-group timeout and Horovod's
stall check do the same for their collectives).
"""
import contextlib
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that ask a training job to checkpoint and stop (schedulers send SIGTERM,
a terminal's Ctrl-C SIGINT)."""

STALLED_EXIT = 4
"""Exit status of a rank whose watchdog fired."""

FALLBACK_GRACE_S = 30.0
"""Seconds after the watchdog's deadline at which ``faulthandler`` ends the rank if the
watchdog's own thread could not run (the stalled thread holds Python's interpreter lock)."""


REPEAT_WINDOW_S = 5.0
"""Stop signals within this many seconds of the first count as that one stop."""


class StopSignal:
    """Records the first SIGTERM/SIGINT instead of dying of it.

    The same stop often arrives more than once: ``pkill -f launch.train`` signals mpiexec,
    which passes it on, and the rank itself; a scheduler signals every process and the
    batch script passes it on too. Signals within ``repeat_window`` seconds of the first
    count as that one stop. A stop signal after that (either kind) ends the job at once
    with exit status 128 + its number (``end_job``: ``MPI_Abort``, so that the launcher
    ends at once too): a user pressing Ctrl-C again, a scheduler insisting, or
    scripts/hydra_ssh ending a job that lost a host.

    Python runs a signal handler only when the main thread is between bytecodes, not
    while it waits inside MPI (an allreduce waiting for a stopped peer can wait for ever).
    So a thread reads the signals as they arrive, from the wake-up file descriptor that
    Python's C-level handler writes each signal number to (``signal.set_wakeup_fd``), and
    decides on repeats by their arrival time; the Python-level handler only records the
    first. Install and uninstall from the main thread.
    """

    def __init__(self, repeat_window=REPEAT_WINDOW_S, stream=None):
        self.signum = None
        self.repeat_window = repeat_window
        self.stream = stream or sys.stderr
        self._first = None
        self._previous = {}
        self._wakeup = None
        self._previous_wakeup = -1

    def install(self):
        read, self._wakeup = os.pipe()
        os.set_blocking(self._wakeup, False)
        self._previous_wakeup = signal.set_wakeup_fd(self._wakeup, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), name='stop-signals',
                         daemon=True).start()
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._wakeup)   # the watching thread reads the end of the pipe, and ends
            self._wakeup = None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def _watch(self, read):
        with os.fdopen(read, 'rb', buffering=0) as pipe:
            while True:
                arrived = pipe.read(64)
                if not arrived:
                    return
                now = time.monotonic()
                for signum in arrived:
                    if signum not in STOP_SIGNALS:
                        continue
                    if self._first is None:
                        self._first = now
                    elif now - self._first >= self.repeat_window:
                        self._end(signum, now - self._first)

    def _end(self, signum, seconds):
        self.stream.write('rank {}: {} again, {:.0f} s after the first: ending at once, '
                          'without a checkpoint (those written before are intact)\n'.format(
                              rank_from_environment(), signal.Signals(signum).name, seconds))
        self.stream.flush()
        end_job(128 + signum)


@contextlib.contextmanager
def children_ignore_stop_signals():
    """Processes started in this block ignore the stop signals, and so do the processes
    they fork: a disposition of 'ignore' survives fork and exec, a handler does not.

    This process ignores them meanwhile too, so keep the block to a process spawn (a few
    milliseconds): holding a signal back instead (blocking it) works only in a process
    with one thread, and NumPy's BLAS and the watchdog have started others. Main thread
    only.
    """
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler installed by C code, left ignored
                signal.signal(signum, handler)


def rank_from_environment():
    """This process's rank as the launcher set it ('?' when none did): MPI may not be
    initialised yet when the watchdog needs to say who it is."""
    for name in ('PMI_RANK', 'OMPI_COMM_WORLD_RANK', 'PMIX_RANK', 'SLURM_PROCID'):
        if os.environ.get(name, '').isdigit():
            return os.environ[name]
    return '0' if 'PMI_FD' not in os.environ and 'PMI_PORT' not in os.environ else '?'


class Watchdog:
    """Ends this rank when it has made no progress for ``timeout`` seconds.

    ``progress(what)`` marks progress (a training iteration, an evaluation batch) and says
    what was done last. Until the first ``progress`` call the allowance is
    ``startup_timeout``: MPI start-up, reading the index, the first batch and the first
    iteration (on a GPU it compiles kernels). 0 disables either allowance.

    When it fires, a thread of this process writes one line (rank, host, pid, what it did
    last, for how long nothing happened) and every thread's stack to stderr, and ends the
    job with ``STALLED_EXIT`` (``end_job``: the whole job, once MPI is initialised).
    That thread needs Python's interpreter lock; should the stalled
    thread hold it, ``faulthandler`` (which needs no lock) writes the stacks ``grace``
    seconds later and exits with 1. A rank stopped outright (SIGSTOP) cannot
    run either; its peers, waiting for it in a collective, make no progress either and
    their watchdogs fire. Not a collective: each rank watches itself. Until MPI is up,
    ``MPI_Abort`` cannot end the job and ``MPI_Init`` holds the interpreter lock: under
    Hydra a ``StartupGuard`` does it then, at the same deadline.
    """

    def __init__(self, timeout, startup_timeout, stream=None, grace=FALLBACK_GRACE_S):
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.grace = grace
        self.rank = rank_from_environment()
        self.stream = stream or sys.stderr
        self._what = 'start-up'
        self._last = time.monotonic()
        self._started = False
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = None
        self._guard = None

    def start(self):
        """Begin watching (the start-up allowance counts from now)."""
        if not (self.timeout or self.startup_timeout) or self._thread is not None:
            return self
        self._last = time.monotonic()
        if self.startup_timeout:
            self._guard = StartupGuard.start(self.rank, self.startup_timeout)
        self._thread = threading.Thread(target=self._watch, name='stall-watchdog', daemon=True)
        self._thread.start()
        return self

    def progress(self, what):
        """Mark progress now; ``what`` says what was just done ('iteration 57'), or is a
        function that says it, called only if the watchdog fires."""
        self._what = what
        self._last = time.monotonic()
        if not self._started:  # from now on the allowance is ``timeout``: look again
            with self._wake:
                self._started = True
                self._wake.notify()

    def stop(self):
        """Stop watching (the work it watched is over)."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
            if self._guard is not None:
                self._guard = self._guard.release()
        faulthandler.cancel_dump_traceback_later()

    def allowance(self):
        return self.timeout if self._started else self.startup_timeout

    def _watch(self):
        with self._wake:
            while not self._stopped:
                if self._guard is not None and mpi_started():
                    self._guard = self._guard.release()
                allowance = self.allowance()
                if not allowance:  # this phase is not watched: look again later
                    faulthandler.cancel_dump_traceback_later()
                    self._wake.wait(1.0)
                    continue
                idle = time.monotonic() - self._last
                if idle >= allowance:
                    if self._guard is not None:  # MPI is not up: MPI_Abort cannot end
                        self._wake.wait(1.0)     # the job, the guard does
                        continue
                    self._fire(idle)
                # The fallback fires a grace period after this deadline unless re-armed
                # here, which this thread does each time it wakes to a later deadline.
                faulthandler.dump_traceback_later(
                    allowance - idle + self.grace, exit=True, file=self.stream)
                # Until MPI is up, look each second: the guard goes once it is.
                self._wake.wait(allowance - idle if self._guard is None
                                else min(allowance - idle, 1.0))

    def _fire(self, idle):
        self.stream.write(
            'error: rank {} (pid {} on {}) made no progress for {:.0f} s (limit {:.0f} s, '
            'train.{}); last done: {}. Stacks of its threads follow; stopping the job.\n'
            .format(self.rank, os.getpid(), socket.gethostname(), idle, self.allowance(),
                    'stall_timeout' if self._started else 'startup_timeout',
                    self._what() if callable(self._what) else self._what))
        self.stream.flush()
        faulthandler.dump_traceback(file=self.stream, all_threads=True)
        self.stream.flush()
        end_job(STALLED_EXIT)


def mpi_started():
    """Whether this process has initialised MPI (mpi4py's ``MPI_Init`` returned). Safe from
    any thread, also while ``mpi4py.MPI`` is being imported (it is in ``sys.modules``
    before its functions are)."""
    initialized = getattr(sys.modules.get('mpi4py.MPI'), 'Is_initialized', None)
    return bool(initialized and initialized())


_GUARD = r"""
import os, select, sys
released, pmi, limit, line = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
if select.select([released], [], [], limit)[0]:
    sys.exit(0)
os.write(2, line.encode() + b'\n')
select.select([], [], [], 1)  # the launcher passes the line on before it ends the job
os.write(pmi, b'cmd=abort exitcode=%d\n' % int(sys.argv[5]))
select.select([released], [], [], 60)
"""


class StartupGuard:
    """Ends the whole job when this rank is still in MPI's start-up after ``limit`` s.

    In ``MPI_Init`` a rank waits for every other rank of the job; one that never gets
    there (stopped, stuck before MPI, on a host that stalls) leaves it waiting for ever,
    holding Python's interpreter lock, so the watchdog's thread cannot run, and a rank
    that merely exits leaves Hydra's ``mpiexec`` waiting for the missing one. The guard is
    a small process of its own, started before ``MPI_Init``: once ``limit`` s pass without
    a ``release``, it writes one line (this rank, its pid and host; the guard of a rank
    stopped inside ``MPI_Init`` runs on and writes its own) and asks Hydra to abort
    the job over this rank's PMI connection (``cmd=abort``, PMI-1's wire protocol;
    ``PMI_FD``), and Hydra kills every rank on every host, stopped ones included; mpiexec
    exits with ``STALLED_EXIT``. Only under Hydra (this rank's parent is
    ``hydra_pmi_proxy``); elsewhere ``start`` returns None. The guard ends by itself when
    this process does (the pipe it waits on closes).
    """

    def __init__(self, process, release_fd):
        self._process = process
        self._release_fd = release_fd

    @classmethod
    def start(cls, rank, limit):
        """A guard of ``limit`` s for this rank (``rank``: its number, for the line), or
        None where it cannot act (not under Hydra) or needs not (MPI is up)."""
        pmi = os.environ.get('PMI_FD', '')
        try:
            with open(f'/proc/{os.getppid()}/comm') as f:
                under_hydra = f.read().strip() == 'hydra_pmi_proxy'
        except OSError:
            under_hydra = False
        if not (under_hydra and pmi.isdigit()) or mpi_started():
            return None
        line = (f'error: rank {rank} (pid {os.getpid()} on {socket.gethostname()}) is still '
                f'in MPI\'s start-up after {limit:.0f} s (limit {limit:.0f} s, '
                f'train.startup_timeout): a rank of the job has not got through it (stopped, '
                f'stuck, or its host unreachable); ending the job (PMI abort)')
        wait, release = os.pipe()
        with children_ignore_stop_signals():
            process = subprocess.Popen(
                [sys.executable, '-I', '-S', '-c', _GUARD, str(wait), pmi, str(limit), line,
                 str(STALLED_EXIT)], pass_fds=(wait, int(pmi)), stdin=subprocess.DEVNULL)
        os.close(wait)
        return cls(process, release)

    def release(self):
        """MPI is up: the guard ends (at once). Returns None."""
        os.close(self._release_fd)
        self._process.wait()
        return None


ABORT_WAIT_S = 10.0
"""Seconds ``end_job`` gives ``MPI_Abort`` before the process exits by itself."""


def end_job(code):
    """End every rank of the job with ``code``: ``MPI_Abort`` once MPI is initialised, else
    this process alone; never returns.

    A rank that merely exits leaves its launcher to take the others down, and Hydra's
    mpiexec waits for every host's proxy to report first: with a host off the network its
    proxy never does, and mpiexec waited for ever after the watchdog of a rank on another
    host fired (measured on the test hosts, scripts/testbed). On ``MPI_Abort`` it ends the
    job at once (1 s there). Should the abort itself hang, the process exits after
    ``ABORT_WAIT_S``.
    """
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        timer = threading.Timer(ABORT_WAIT_S, os._exit, (code,))
        timer.daemon = True
        timer.start()
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)


def watch_calls(function, watchdog, what):
    """``function`` that marks progress on ``watchdog`` at each call (e.g. a converter
    that the evaluator calls once per batch: each batch is progress)."""
    def call(*args, **kwargs):
        watchdog.progress(what)
        return function(*args, **kwargs)
    return call
