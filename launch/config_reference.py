"""Write the configuration reference (docs/configuration.md) from the config dataclasses.

    python -m launch.config_reference docs/configuration.md    # what `make docs` runs

Without a path the page goes to stdout. Every key's type, default and meaning come from
the dataclasses themselves: the field's type (a ``typing.Literal`` lists its choices), its
default, and the string literal under it (``config.describe``).
``tests/distributed/test_config.py`` fails when the page and the code disagree.
"""
import dataclasses
import importlib
import sys
import typing

import distributed  # noqa: F401  (compat shims before chainer)
from distributed import config as config_module

SCHEMAS = (
    ('launch.train', 'distributed.config:Config'),
    ('launch.evaluate', 'distributed.evaluate:EvalConfig'),
    ('launch.predict', 'distributed.predict:PredictConfig'),
    ('launch.view_samples', 'distributed.samples:SamplesConfig'),
    ('launch.benchmark', 'distributed.bench.config:BenchConfig'),
)
"""Each launcher and the dataclass of its configuration, as ``module:name``: the one place
that says where the config classes live."""

INTRO = """\
# Configuration

Every launcher reads its configuration the same way:

```sh
python -m launch.train -c FILE key.sub=value ...
python -m launch.train -c FILE --print-config     # the resolved config, without running
```

Defaults < the YAML file < the command line; of repeated overrides on the command line the
last wins. The value of a text key (`out`, `data.root`, `device`, `resume`, `model.path`, a
key with choices, ...) is taken as typed: `out=0012` is the folder `0012`, which YAML would
read as the octal number 10 (and `12:30` as 750). Other values are read as YAML
(`optimizer.decay_epochs=[30,60]`, `train.progress=false`). Numbers may be written in
exponent notation, in the file too (`optimizer.lr=1e-3`, `weight_decay: 5e-5`, where YAML
1.1 alone wants `1.0e-3`), and a whole number so written serves an integer key
(`checkpoint.interval=2e3`). In the file, an unquoted number under a text key is taken as
written (`out: 0012` is `0012`, as on the command line); an unquoted `yes`, `no`, `on`,
`off`, `true`, `false`, `null` or nothing there is refused: quote it.

Unknown keys, wrong types and impossible values stop the job on every rank with one message
naming the key, before anything runs: among them a value outside a key's choices, numbers
that are not finite (`.nan`, `.inf`, `1e400`), a `train.seed` outside 0..2147483647 (the
weights' initialisation seeds NumPy, which takes seeds below 2^32), timeouts over a year, an
`out` that is a file or lies below one, and a config file that is a folder, is not UTF-8
(UTF-16 with a byte-order mark, Notepad's "Unicode", is read), is not valid YAML (the line
and column are named) or writes a key twice in one section (two `train:` sections: plain
YAML would keep the last without a word).

This page is generated from the config dataclasses (the type, the default and the text
under each field): change those, then run `make docs`; `tests/distributed/test_config.py`
fails while the two disagree.
"""


def load_schema(name):
    """The dataclass named ``module:name``."""
    module, _, attr = name.partition(':')
    return getattr(importlib.import_module(module), attr)


def type_text(key, kind, bounds=config_module):
    """How the reference writes the field type ``kind`` of ``key``; ``bounds``: the module
    whose ``POSITIVE`` and ``NON_NEGATIVE`` key lists its launcher checks (training's by
    default: the launchers that read a training config check those keys too)."""
    if config_module.choices(kind):
        return 'one of ' + ', '.join(f'`{c}`' for c in config_module.choices(kind))
    if typing.get_origin(kind) in (list, typing.List):
        return f'list of {typing.get_args(kind)[0].__name__}'
    for module in {config_module, bounds}:
        if key in getattr(module, 'POSITIVE', ()):
            return kind.__name__ + ' > 0'
        if key in getattr(module, 'NON_NEGATIVE', ()):
            return kind.__name__ + ' >= 0'
    return kind.__name__


def default_text(value):
    """A default as it would be written in the YAML file."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value == '':
        return "''"
    return str(value)


def table(rows, bounds=config_module):
    lines = ['| key | type | default | meaning |', '| --- | --- | --- | --- |']
    for key, kind, default, meaning in rows:
        meaning = meaning.replace('|', r'\|')
        lines.append(f'| `{key}` | {type_text(key, kind, bounds)} | `{default_text(default)}` | '
                     f'{meaning} |')
    return '\n'.join(lines) + '\n'


def sections(schema):
    """``[(name, description)]`` of the sections (dataclass fields) of ``schema``."""
    hints = typing.get_type_hints(schema)
    return [(name, config_module.field_doc(schema, name).rstrip('.'))
            for name, kind in hints.items() if dataclasses.is_dataclass(kind)]


def render():
    """The whole of docs/configuration.md."""
    base = {row[0]: row for row in config_module.describe(config_module.Config)}
    parts = [INTRO]
    for command, name in SCHEMAS:
        schema = load_schema(name)
        rows = config_module.describe(schema)
        parts.append(f'\n## `{command}`\n\n')
        if schema is config_module.Config:
            listed = '; '.join(f'`{name}` ({text})' for name, text in sections(schema))
            parts.append(f'`Config`: the training run, in sections: {listed}.\n\n')
        elif issubclass(schema, config_module.Config):
            changed = ''.join(f' Its `{name}` section: {text}.' for name, text in sections(schema)
                              if (name, text) not in sections(config_module.Config))
            parts.append(f'`{schema.__name__}`: the keys of `launch.train` (read and checked '
                         f'too, so one file serves both), and the keys below.{changed}\n\n')
            rows = [row for row in rows if base.get(row[0]) != row]
        else:
            parts.append(f'`{schema.__name__}`: its own keys.\n\n')
        parts.append(table(rows, sys.modules[schema.__module__]))
    return ''.join(parts)


def main(argv):
    text = render()
    if not argv:
        sys.stdout.write(text)
        return 0
    with open(argv[0], 'w') as f:
        f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
