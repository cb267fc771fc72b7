"""Running the launchers as users do: one process, or under mpiexec."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, 'mpiexec') if os.path.exists(os.path.join(BIN, 'mpiexec')) \
    else 'mpiexec'
# Small enough for a CPU test: ResNet-50 still runs end to end at 32 px.
TINY = ['data.crop_size=32', 'data.scale_size=36', 'data.loader=serial', 'train.batch_size=4',
        'train.progress=false', 'device=cpu', 'optimizer.warmup_epochs=0']


def process_tree():
    """{pid: (parent pid, command line)} of every process now, from /proc."""
    tree = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/{}/stat'.format(entry)) as f:
                    parent = int(f.read().rsplit(')', 1)[1].split()[1])
                with open('/proc/{}/cmdline'.format(entry), 'rb') as f:
                    command = f.read().replace(b'\0', b' ').decode(errors='replace')
            except (OSError, ValueError, IndexError):
                continue
            tree[int(entry)] = (parent, command)
    return tree


def descendants(tree, pid):
    """``pid`` and every process below it in ``tree`` (``process_tree``), parents first."""
    below, todo = [], [pid]
    while todo:
        pid = todo.pop(0)
        below.append(pid)
        todo += [child for child, (parent, _) in tree.items() if parent == pid]
    return below


def run_launcher(module, args, ranks=1, timeout=300, cwd=None, env=None):
    """Run ``python -m module args`` as one process or under ``mpiexec -n ranks``."""
    command = [sys.executable, '-m', module] + list(args)
    if ranks > 1:
        command = [MPIEXEC, '-n', str(ranks)] + command
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(command, cwd=cwd or REPO, env=environment, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
