"""Jobs of scripts/slurm/train.sbatch on a SLURM cluster, as sbatch, scontrol and sacct see
them: for tests/system/test_slurm.py (a one-node cluster on this machine) and
tests/system/test_multinode_slurm.py (a cluster on the test hosts, whose commands run on a test
host: ``prefix``)."""
import glob
import json
import os
import re
import subprocess
import time

import pytest

from jobs import TINY
from launching import BIN, REPO

SCRIPT = os.path.join(REPO, 'scripts', 'slurm', 'train.sbatch')
CPU_NODE = ['--gpus-per-node=0', '--ntasks-per-node=2', '--cpus-per-task=1']
"""The script's #SBATCH lines ask for 8 GPUs and 8 tasks per node: a 2-core CPU node's shape."""
JOB = TINY + ['data.loader=multiprocess', 'data.workers=1', 'train.log_interval=1',
              'train.startup_timeout=300', 'train.stall_timeout=120']
"""The real recipe (the script's default config) cut down, with its loader worker processes
(one per iterator), a log line per iteration, and a bounded start-up: a hung start-up
fails the test instead of waiting for ever."""
ENV = {k: v for k, v in os.environ.items()
       if k not in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')
       and not k.startswith(('SLURM_', 'SBATCH_', 'SRUN_'))}
ENV['VENV'] = os.path.dirname(BIN)
FINAL = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'PREEMPTED',
         'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE')
DEADLINE = 60  # seconds from a signal or a failure to the job being over


class Job:
    """A job of the batch script, as sbatch, scontrol and sacct see it."""

    def __init__(self, name, tmp_path, overrides, options=(), prefix=(), env=None):
        """``prefix``: what SLURM's commands run through (``scripts/testbed/on sop-n1``
        for the test hosts' cluster); ``env``: the job's environment (``ENV``)."""
        self.name, self.out = name, os.path.join(REPO, 'results', name)
        self.prefix = list(prefix)
        tmp_path.mkdir()
        self.output_file = str(tmp_path / 'slurm-{}.out'.format(name))
        done = subprocess.run(
            self.prefix
            + ['sbatch', '--parsable', '--job-name', name, '--output', self.output_file]
            + CPU_NODE + list(options) + [SCRIPT] + JOB + list(overrides),
            cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        self.id = done.stdout.strip().split(';')[0]

    def info(self):
        """scontrol's record of the job: JobState, ExitCode ('143:0'), Restarts, ..."""
        done = subprocess.run(
            self.prefix + ['scontrol', '--oneliner', 'show', 'job', self.id],
            capture_output=True, text=True, timeout=30)
        return dict(f.split('=', 1) for f in done.stdout.split() if '=' in f)

    def scancel(self, *options):
        subprocess.run(self.prefix + ['scancel'] + list(options) + [self.id], timeout=30)

    def output(self):
        try:
            with open(self.output_file, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def fail(self, why):
        self.scancel()
        pytest.fail('job {} ({}): {}\n{}'.format(self.id, self.name, why, self.output()))

    def wait(self, until, what, timeout, poll=0.5):
        end = time.monotonic() + timeout
        while not until():
            if time.monotonic() > end:
                self.fail('no {} within {} s (state {})'.format(
                    what, timeout, self.info().get('JobState')))
            time.sleep(poll)

    def iterations(self):
        """The last iteration in rank 0's log (one entry an iteration here), 0 before."""
        try:
            with open(os.path.join(self.out, 'log')) as f:
                return json.load(f)[-1]['iteration']
        except (OSError, ValueError, IndexError, KeyError):
            return 0

    def wait_for_training(self, timeout=240):
        """Until the job has trained 2 iterations. (ChainerMN's optimizer only broadcasts
        the weights in the first, so a checkpoint of iteration 1 has no optimizer state.)"""
        self.wait(lambda: self.iterations() >= 2 or self.info().get('JobState') in FINAL,
                  'second iteration', timeout)
        if self.iterations() < 2:
            self.fail('the job ended before its second iteration')

    def end(self, timeout=300, restarts=0):
        """The job's final record, once it is over (the restarts-th start of it)."""
        self.wait(lambda: (self.info().get('JobState') in FINAL
                           and int(self.info().get('Restarts', 0)) >= restarts),
                  'end', timeout)
        info = self.info()
        info['sacct'] = subprocess.run(
            self.prefix + ['sacct', '--completion', '--noheader', '--parsable2', '--jobs',
                           self.id, '--format', 'JobID,JobName,State,ExitCode'],
            capture_output=True, text=True, timeout=30).stdout.strip()
        print('job {}: {} {}, restarts {}; sacct -c: {}'.format(
            self.id, info['JobState'], info['ExitCode'], info.get('Restarts'), info['sacct']))
        return info

    def checkpoints(self):
        return sorted(glob.glob(os.path.join(self.out, 'snapshot_iter_*.npz')),
                      key=lambda p: int(re.findall(r'\d+', os.path.basename(p))[0]))

    def task_pid(self, rank):
        """The pid of a rank as srun started it (before it has printed anything), or None."""
        for entry in os.listdir('/proc'):
            try:
                with open('/proc/{}/cmdline'.format(entry), 'rb') as f:
                    if b'launch.train' not in f.read():
                        continue
                with open('/proc/{}/environ'.format(entry), 'rb') as f:
                    env = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
            except OSError:  # not a process, or gone
                continue
            if (env.get(b'SLURM_JOB_ID'), env.get(b'SLURM_PROCID')) == (
                    self.id.encode(), str(rank).encode()) and b'SLURM_STEP_ID' in env:
                return int(entry)
        return None

    def rank_pid(self, rank):
        """The pid of a rank, from the job's first line ('ranks: 0 pid 123 on host, ...')."""
        found = re.search(r'\b{} pid (\d+) on'.format(rank), self.output())
        return int(found.group(1)) if found else None


def assert_stopped_with_checkpoint(job, info):
    """Ended by SIGTERM after a checkpoint: exit 143, the closing line, the file it names."""
    output = job.output()
    assert (info['JobState'], info['ExitCode']) == ('FAILED', '143:0'), output
    stop = re.search(r'stopped by SIGTERM at iteration (\d+); checkpoint (\S+);', output)
    assert stop, output
    assert os.path.exists(stop.group(2)), output
    assert 'Killed' not in output and 'forcing job termination' not in output, output
    return int(stop.group(1))
