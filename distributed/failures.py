"""How a failing rank ends the job, and what it says: one message written whole, then
``MPI_Abort`` for every rank; an error of the machine (a full disk) in one line that names
the file.
"""
import contextlib
import errno
import os
import sys
import threading
import time
import traceback


ABORT_GRACE_S = 1.0
"""Seconds between a rank's last message and MPI_Abort, for the launcher to pass it on."""


def abort(message, code):
    """Write ``message`` to stderr at once, then end every rank with ``MPI_Abort(code)``.

    The launcher forwards each rank's output on its own schedule and may tear the job down
    as soon as the abort reaches it; a message written in pieces (a traceback) was seen cut
    after its first line. One write and a short pause let it out whole. Never returns:
    MPICH's ``MPI_Abort`` was seen to return while its launcher tore the job down.
    """
    sys.stderr.write(message if message.endswith('\n') else message + '\n')
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    from mpi4py import MPI
    MPI.COMM_WORLD.Abort(code)
    os._exit(code)


MACHINE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
"""Errors of the machine, not of the program (a full disk, a quota, a read-only or
forbidden folder): said in one line, without a traceback."""


@contextlib.contextmanager
def naming(path):
    """An ``OSError`` raised in the block names ``path`` when it names no file: a write to
    a full disk fails at a flush or a close, inside NumPy's zip writer or ``io``, with an
    error that names none (``[Errno 28] No space left on device``)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = path
        raise


def _abort_on_uncaught(exctype, value, tb):
    # What chainermn's global_except_hook does (print, then MPI_Abort), with the message
    # written whole before the abort. An error that carries an ``exit_code`` is one a
    # user can act on: its message alone is shown, and the job ends with that code.
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    code = getattr(value, 'exit_code', None)
    if code:
        abort(f'error: {value}', code)
    if isinstance(value, OSError) and value.errno in MACHINE_FAULTS:
        # Checkpoints and results are written to a temporary name and renamed: the files
        # written before this one are intact.
        abort(f'error: rank {rank}: {value}; the files written before are intact: fix that '
              'and run again (launch.train continues with resume=auto)', 1)
    trace = ''.join(traceback.format_exception(exctype, value, tb))
    abort(f'{trace}Uncaught exception on rank {rank}: stopping every rank (MPI_Abort).', 1)


def _abort_on_uncaught_in_thread(args):
    # A MultiprocessIterator re-raises a loader worker's error in its prefetch thread; the
    # thread dies and the main thread would wait for its next batch for ever.
    if args.exc_type is not SystemExit:
        _abort_on_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def abort_on_uncaught_exceptions():
    """From now on, one rank raising an uncaught exception, in any thread, aborts every rank
    (``abort``) instead of leaving them waiting in a collective for ever."""
    sys.excepthook = _abort_on_uncaught
    threading.excepthook = _abort_on_uncaught_in_thread
