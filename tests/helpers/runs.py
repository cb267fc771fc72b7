"""Training runs compared: a run through the launcher, its log lines, TensorBoard scalars and
weights, and whether a resumed run follows an uninterrupted one."""
import glob
import json
import struct

import numpy
import pytest

from jobs import TINY
from launching import run_launcher


def train(root, out, ranks, *overrides):
    done = run_launcher('launch.train', ['data.root={}'.format(root), 'out={}'.format(out)]
                        + TINY + list(overrides), ranks=ranks, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert '\x1b' not in done.stdout, 'terminal control codes in a log file'
    return done


def scalars(out):
    """{tag: {step: value}} of the TensorBoard event files in ``out`` (TFRecord framing:
    length, its CRC, an ``Event`` protobuf, its CRC)."""
    from tensorboardX.proto import event_pb2
    found = {}
    for path in glob.glob(str(out / 'events.out.tfevents.*')):
        with open(path, 'rb') as f:
            data = f.read()
        start = 0
        while start < len(data):
            length, = struct.unpack('<Q', data[start:start + 8])
            event = event_pb2.Event.FromString(data[start + 12:start + 12 + length])
            start += 16 + length
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def log(out):
    return {entry['iteration']: entry for entry in json.loads((out / 'log').read_text())}


def weights(path):
    with numpy.load(str(path), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith('updater/model:main/')}


def assert_follows(straight, resumed, iterations):
    """The resumed run's log lines and last weights against the uninterrupted run's."""
    expected, got = log(straight), log(resumed)
    assert sorted(got) == sorted(expected)
    for iteration in iterations:
        want, have = expected[iteration], got[iteration]
        assert have['epoch'] == want['epoch'] and have['lr'] == want['lr'], iteration
        for key in ('main/loss', 'main/accuracy'):
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (iteration, key)
    last = max(iterations)
    want = weights(straight / 'snapshot_iter_{}.npz'.format(last))
    have = weights(resumed / 'snapshot_iter_{}.npz'.format(last))
    assert want.keys() == have.keys()
    for key in want:
        numpy.testing.assert_allclose(have[key], want[key], rtol=1e-3, atol=1e-5, err_msg=key)
