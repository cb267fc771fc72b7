import os

import pytest
import yaml

from distributed import config as config_module
from distributed.config import Config, ConfigError, build, describe, load_config, to_dict
from launch import config_reference
from launching import REPO


def test_defaults_file_and_overrides_in_order(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('train:\n  batch_size: 8\n  epochs: 2\nout: from_file\n')
    config = load_config(str(path), ['train.epochs=3', 'optimizer.decay_epochs=[1, 2]'])
    assert config.train.batch_size == 8          # file beats default
    assert config.train.epochs == 3.0            # command line beats file
    assert config.out == 'from_file'
    assert config.optimizer.decay_epochs == [1.0, 2.0]
    assert config.optimizer.momentum == 0.9      # default


@pytest.mark.parametrize('override, words', [
    ('train.bogus=1', ["unknown config key 'train.bogus'", 'batch_size']),
    ('nosuch.key=1', ["unknown config key 'nosuch'"]),
    ('train.batch_size=abc', ['train.batch_size must be an int', "'abc'"]),
    ('train.batch_size=0', ['train.batch_size must be positive']),
    ('train.batch_size=true', ['train.batch_size must be an int']),
    ('optimizer.lr=-0.1', ['optimizer.lr must be zero or positive']),
    ('data.loader=threads', ['data.loader must be one of multiprocess, serial']),
    ('comm.communicator=nccl', ['comm.communicator must be one of auto, inplace, naive, flat, '
                                'non_cuda_aware, pure_nccl', "not 'nccl'"]),
    ('optimizer.decay_epochs=5', ['optimizer.decay_epochs must be a list']),
    ('optimizer.decay_epochs=[60,30]', ['increasing']),
    ('optimizer.warmup_start=2', ['warmup_start']),
    ('data.scale_size=10', ['data.scale_size (10) must be at least data.crop_size']),
    ('device=gpu', ["device must be 'auto', 'cpu' or a GPU id"]),
    ('train.epochs', ['is not key=value']),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize('override, key, value', [
    ('optimizer.lr=1e-3', 'optimizer.lr', 0.001),
    ('optimizer.weight_decay=5E-5', 'optimizer.weight_decay', 5e-5),
    ('optimizer.lr=1.0e3', 'optimizer.lr', 1000.0),         # YAML 1.1 wants 1.0e+3
    ('optimizer.lr=.5e-1', 'optimizer.lr', 0.05),
    ('train.epochs=1e2', 'train.epochs', 100.0),
    ('optimizer.decay_epochs=[3e1, 6e1]', 'optimizer.decay_epochs', [30.0, 60.0]),
    ('train.batch_size=1e1', 'train.batch_size', 10),        # a whole number: an int
    ('checkpoint.interval=2.5e3', 'checkpoint.interval', 2500),
    ('train.batch_size=16.0', 'train.batch_size', 16),
])
def test_exponent_notation_is_a_number(override, key, value):
    config = load_config(None, [override])
    section, name = key.split('.')
    got = getattr(getattr(config, section), name)
    assert got == value and type(got) is type(value)
    yaml.safe_dump(to_dict(config))  # plain values: the resolved config can be written


def test_exponent_notation_in_a_file(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('optimizer:\n  weight_decay: 5e-5\n  lr: 1e-3\n'
                    'train:\n  epochs: 1e2\n  batch_size: 1e1\n')
    config = load_config(str(path))
    assert (config.optimizer.weight_decay, config.optimizer.lr) == (5e-5, 1e-3)
    assert (config.train.epochs, config.train.batch_size) == (100.0, 10)


@pytest.mark.parametrize('override, words', [
    ('train.batch_size=2.5e0', ['train.batch_size must be an int (a whole number), not 2.5e0']),
    ('train.batch_size=1e20', ['train.batch_size must be an int']),  # beyond float's exact ints
    ('optimizer.lr=1e-3x', ["optimizer.lr must be a float, not '1e-3x'"]),
])
def test_numbers_that_are_not_what_the_key_takes(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize('typed', ['0012', '12:30', '1e3', '0x1F', '1_000', '1.50', 'yes',
                                   'null', '~', '[a, b]', '.inf', "'quoted'", '#1', 'a: b'])
def test_text_keys_take_the_value_as_typed(typed):
    # YAML 1.1 would make 0012 the octal 10 and 12:30 the base-60 750: another folder.
    config = load_config(None, ['out=' + typed, 'data.root=' + typed, 'resume=' + typed])
    assert config.out == config.data.root == config.resume == typed
    yaml.safe_dump(to_dict(config))


def test_text_keys_that_look_like_numbers():
    config = load_config(None, ['device=01', 'optimizer.warmup_start=5e-1'])
    assert config.device == '01' and config.optimizer.warmup_start == '5e-1'
    # Other keys still read YAML.
    assert load_config(None, ['train.progress=off']).train.progress is False


def test_text_keys_in_a_file_take_a_number_as_written(tmp_path):
    # A number where text belongs is the text the file shows, as on the command line.
    path = tmp_path / 'c.yaml'
    path.write_text('out: 0012\ndevice: 01\ndata:\n  root: 12:30\nresume: 1e3\n')
    config = load_config(str(path))
    assert (config.out, config.device, config.data.root, config.resume) == (
        '0012', '01', '12:30', '1e3')
    yaml.safe_dump(to_dict(config))


@pytest.mark.parametrize('line', ['out: yes', 'out: off', 'out:', 'out: null'])
def test_text_keys_in_a_file_say_to_quote_yaml_words(tmp_path, line):
    path = tmp_path / 'c.yaml'
    path.write_text(line + '\n')
    with pytest.raises(ConfigError, match=r'out must be a str, not .*put the text in quotes '
                       r'\(in .*c.yaml\)$'):
        load_config(str(path))


@pytest.mark.parametrize('override, message', [
    # numpy's RandomState takes seed + rank below 2**32: a traceback on every rank.
    ('train.seed=-1', 'train.seed must be within 0..2147483647, not -1'),
    ('train.seed=4294967296', 'train.seed must be within 0..2147483647, not 4294967296'),
    # The watchdog's deadline would overflow the clock in its thread.
    ('train.stall_timeout=.inf', 'train.stall_timeout must be a finite number, not .inf'),
    ('train.stall_timeout=1e12', 'train.stall_timeout must be at most 31536000 (a year)'),
    ('train.startup_timeout=1e12', 'train.startup_timeout must be at most 31536000'),
    # nan passes every comparison: the run would train on a nan loss.
    ('optimizer.lr=.nan', 'optimizer.lr must be a finite number, not .nan'),
    ('optimizer.lr=.inf', 'optimizer.lr must be a finite number, not .inf'),
    ('optimizer.momentum=.NaN', 'optimizer.momentum must be a finite number, not .NaN'),
    ('train.epochs=-.inf', 'train.epochs must be a finite number, not -.inf'),
    ('optimizer.weight_decay=1e400', 'optimizer.weight_decay must be a finite number, not '
     '1e400'),
    ('optimizer.decay_epochs=[30, .nan]', 'optimizer.decay_epochs[1] must be a finite number'),
    ('train.epochs=1' + '0' * 400, 'train.epochs must be a finite number'),  # beyond a float
])
def test_values_that_would_fail_later_are_refused_at_load(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value) and '\n' not in str(error.value)


def test_the_largest_seed_and_timeout_are_accepted():
    config = load_config(None, ['train.seed=2147483647', 'train.stall_timeout=31536000'])
    assert config.train.seed == 2 ** 31 - 1 and config.train.stall_timeout == 31536000


def test_non_finite_numbers_in_a_file(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('optimizer:\n  lr: .nan\n')
    with pytest.raises(ConfigError, match=r'optimizer.lr must be a finite number, not \.nan '
                       r'\(in .*c.yaml\)'):
        load_config(str(path))


def test_out_must_be_a_folder_that_can_be_made(tmp_path):
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('x')
    with pytest.raises(ConfigError, match='out {} is a file, not a folder; name a results '
                       'folder'.format(a_file)):
        load_config(None, ['out={}'.format(a_file)])
    with pytest.raises(ConfigError, match='out {} cannot be a folder: {} is a file'.format(
            a_file / 'run1', a_file)):
        load_config(None, ['out={}'.format(a_file / 'run1')])
    assert load_config(None, ['out={}'.format(tmp_path / 'new' / 'run1')]).out


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16'])
def test_config_files_with_a_byte_order_mark_are_read(tmp_path, encoding):
    path = tmp_path / 'c.yaml'
    path.write_bytes('train:\r\n  epochs: 3\r\nout: résultats\r\n'.encode(encoding))
    config = load_config(str(path))
    assert config.train.epochs == 3 and config.out == 'résultats'


@pytest.mark.parametrize('content, message', [
    ('train:\n  epochs: 3\n'.encode('utf-16-le'),
     'is not UTF-8 text (it holds zero bytes: UTF-16 without a byte-order mark, or not a '
     'text file); save it as UTF-8'),
    ('out: résultats\n'.encode('cp1252'),
     'is not UTF-8 text (byte 0xe9 at line 1 is not UTF-8); save it as UTF-8'),
    (b'out: a\x07b\n', 'is not valid YAML: line 1 holds the character U+0007, which YAML '
     'does not allow; remove it'),
    ('out: x\n'.encode('utf-16') + b'!', 'is not UTF-8 text (its UTF-16 breaks off at byte '
     '16); save it as UTF-8'),
    (b'train: [1,\n', 'is not valid YAML: line 2, column 1: expected the node content'),
])
def test_config_files_that_do_not_read_say_why_in_one_line(tmp_path, content, message):
    path = tmp_path / 'c.yaml'
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert str(error.value).startswith('config file {} '.format(path))
    assert message in str(error.value) and '\n' not in str(error.value)


@pytest.mark.parametrize('content, line, first', [
    ('train:\n  epochs: 3\nmodel:\n  arch: resnet50\ntrain:\n  batch_size: 8\n', 5, 1),
    ('train:\n  epochs: 3\n  batch_size: 8\n  epochs: 5\n', 4, 2),
])
def test_a_key_written_twice_is_refused(tmp_path, content, line, first):
    path = tmp_path / 'c.yaml'
    path.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert 'line {}, column'.format(line) in str(error.value)
    assert 'is written twice (first on line {})'.format(first) in str(error.value)


def test_a_key_given_by_a_merge_may_be_overridden(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('train:\n  <<: {epochs: 3, batch_size: 8}\n  epochs: 5\n')
    config = load_config(str(path))
    assert (config.train.epochs, config.train.batch_size) == (5, 8)


def test_a_folder_for_the_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match='config file {} is a folder, not a YAML file; pass a '
                       'file with -c'.format(tmp_path)):
        load_config(str(tmp_path))


def test_a_value_and_a_key_below_it_conflict():
    with pytest.raises(ConfigError, match='override train.epochs conflicts with another'):
        load_config(None, ['train=3', 'train.epochs=2'])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('train:\n  batchsize: 8\n')
    with pytest.raises(ConfigError, match=r"train.batchsize.*\(in .*c.yaml\)"):
        load_config(str(path))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(str(tmp_path / 'nope.yaml'))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('train: [1,\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(str(bad))


def test_every_key_has_a_meaning():
    rows = describe(Config)
    assert {'data.root', 'data.crop_size', 'train.batch_size', 'train.epochs', 'optimizer.lr',
            'out'} <= {key for key, _, _, _ in rows}
    assert all(meaning for _, _, _, meaning in rows), [k for k, _, _, m in rows if not m]


def test_shipped_configs_load():
    for name in ('configs/smoke.yaml', 'configs/sop_resnet50.yaml'):
        assert build(Config, name).model.arch == 'resnet50'


def test_the_reference_page_is_the_code():
    page = os.path.join(REPO, 'docs', 'configuration.md')
    with open(page) as f:
        written = f.read()
    assert written == config_reference.render(), (
        'docs/configuration.md differs from the config dataclasses; run make docs')


@pytest.mark.parametrize('command, name', config_reference.SCHEMAS)
def test_every_key_of_every_launcher_is_described(command, name):
    page = config_reference.render()
    assert f'## `{command}`' in page
    for key, _, _, meaning in describe(config_reference.load_schema(name)):
        assert f'| `{key}` |' in page, key
        assert meaning, f'{key} has no description under its field'


@pytest.mark.parametrize('key, bad', [
    ('data.loader', 'threads'), ('data.on_bad_image', 'ignore'), ('model.arch', 'resnet18'),
    ('optimizer.lr_scaling', 'sqrt'), ('train.dtype', 'float16'), ('train.conv_bn', 'cublas'),
    ('comm.allreduce_dtype', 'bfloat16'),
])
def test_choices_come_from_the_field_types(key, bad):
    kind = config_module._leaf_type(Config, key)
    allowed = config_module.choices(kind)
    assert allowed and len(allowed) >= 2
    for value in allowed:  # each is taken, as typed
        assert config_module._get(load_config(None, [f'{key}={value}']), key) == value
    with pytest.raises(ConfigError) as error:
        load_config(None, [f'{key}={bad}'])
    assert str(error.value).startswith(f"{key} must be one of {', '.join(allowed)}, not '{bad}'")


def test_a_choice_in_a_file_is_checked_too(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('model:\n  arch: resnet18\n')
    with pytest.raises(ConfigError, match='model.arch must be one of resnet50, resnet101'):
        load_config(str(path))


def test_inherited_fields_keep_their_meaning():
    from distributed.evaluate import EvalConfig
    rows = {key: meaning for key, _, _, meaning in describe(EvalConfig)}
    assert rows['model.arch'] == config_module.field_doc(config_module.ModelConfig, 'arch')
    assert rows['model.path'] and rows['split'] and rows['train.epochs']
