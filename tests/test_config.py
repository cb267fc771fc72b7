import pytest

from distributed.config import Config, ConfigError, build, describe, load_config


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
            'out'} <= {key for key, _, _ in rows}
    assert all(meaning for _, _, meaning in rows), [k for k, _, m in rows if not m]


def test_shipped_configs_load():
    for name in ('configs/smoke.yaml', 'configs/sop_resnet50.yaml'):
        assert build(Config, name).model.arch == 'resnet50'


def test_readme_table_lists_every_key():
    import os
    readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
    missing = [key for key, _, _ in describe(Config) if '| `{}` |'.format(key) not in readme]
    assert not missing, 'add these keys to the README table: {}'.format(missing)
