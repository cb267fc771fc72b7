"""distributed.checkpoint.files: naming, the layout, what a file may hold, what a damaged one
says."""
import json
import os

import distributed  # noqa: F401
import numpy
import pytest

from distributed.checkpoint.files import CheckpointError, find_latest, read_checkpoint, save
from distributed.checkpoint.resume import choose
from distributed.config import load_config
from toy_trainer import make_trainer, record, run, text_array


def test_find_latest_takes_the_highest_finished_iteration(tmp_path):
    assert find_latest(str(tmp_path)) is None
    assert find_latest(str(tmp_path / 'absent')) is None
    for name in ('snapshot_iter_9.npz', 'snapshot_iter_10.npz', 'snapshot_iter_2.npz',
                 'snapshot_iter_11.npz.part', 'model.npz'):
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / 'tmpsnapshot_iter_12.npzabc').mkdir()
    assert find_latest(str(tmp_path)) == str(tmp_path / 'snapshot_iter_10.npz')


def test_none_values_are_listed_not_pickled(tmp_path):
    """chainer's writer stores None as an object array, which only pickle reads: the
    checkpoint lists those keys instead, and reading gives None back."""
    path = str(tmp_path / 'snapshot_iter_1.npz')
    save(path, {'a/none': numpy.asarray(None), 'a/one': numpy.ones(2),
                'meta/record': text_array(record(1))})
    with numpy.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ['a/one', 'meta/none', 'meta/record']
        assert json.loads(archive['meta/none'].tobytes()) == ['a/none']
    arrays, saved = read_checkpoint(open(path, 'rb').read(), path)
    assert arrays['a/none'][()] is None and saved == record(1)
    with pytest.raises(TypeError, match=r'Python objects at \[.a/list.\]'):
        save(path, {'a/list': numpy.array([{}], object)})


def test_checkpoints_of_a_run_hold_no_python_objects(tmp_path):
    # Each checkpoint reads back with allow_pickle=False and lists its None values apart.
    trainer, _ = make_trainer(tmp_path, 8, interval=1, keep=8)
    run(trainer)
    nones = []
    for name in sorted(os.listdir(tmp_path)):
        if name.startswith('snapshot_iter_'):
            with numpy.load(tmp_path / name, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            assert not [k for k, v in arrays.items() if v.dtype.hasobject]
            nones.append(json.loads(arrays['meta/none'].tobytes()))
    assert len(nones) == 8 and all(isinstance(n, list) for n in nones), nones


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    from files import arrays_of, object_array, pickled_rank_states, rewrite
    trainer, _ = make_trainer(tmp_path, 1, interval=1)
    run(trainer)
    good = tmp_path / 'snapshot_iter_1.npz'
    marker = tmp_path / 'ran'
    pickled_rank_states(good, tmp_path / 'old.npz', marker, ranks=1)
    arrays = arrays_of(good)
    arrays['updater/model:main/predictor/fc1/W'] = object_array(marker)
    rewrite(tmp_path / 'objects.npz', arrays)
    for name, message in (('old.npz', 'written by an earlier version of launch.train'),
                          ('objects.npz', 'holds updater/model:main/predictor/fc1/W as '
                                          'Python objects')):
        with pytest.raises(CheckpointError, match=message):
            choose(str(tmp_path / name), str(tmp_path), record(1), 1)
    assert not marker.exists()


def test_a_write_to_a_full_disk_names_the_file(tmp_path):
    # /dev/full fails every write with ENOSPC, at a flush or a close, as a full disk does:
    # the OS's error names no file, and the one line the job ends with must.
    from distributed.reports import write_config
    with pytest.raises(OSError) as error:
        save('/dev/full', {'a': numpy.zeros(100000, numpy.float32)})
    assert str(error.value) == "[Errno 28] No space left on device: '/dev/full'"
    (tmp_path / 'config.yaml').symlink_to('/dev/full')
    with pytest.raises(OSError) as error:
        write_config(load_config(None, []), str(tmp_path))
    assert error.value.filename == str(tmp_path / 'config.yaml')
