"""Running the launchers as users do: one process, or under mpiexec."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, 'mpiexec') if os.path.exists(os.path.join(BIN, 'mpiexec')) \
    else 'mpiexec'
# Small enough for a CPU test: ResNet-50 still runs end to end at 32 px.
TINY = ['data.crop_size=32', 'data.scale_size=36', 'data.loader=serial', 'train.batch_size=4',
        'train.progress=false', 'device=cpu', 'optimizer.warmup_epochs=0']


def run_launcher(module, args, ranks=1, timeout=300, cwd=None, env=None):
    """Run ``python -m module args`` as one process or under ``mpiexec -n ranks``."""
    command = [sys.executable, '-m', module] + list(args)
    if ranks > 1:
        command = [MPIEXEC, '-n', str(ranks)] + command
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(command, cwd=cwd or REPO, env=environment, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
