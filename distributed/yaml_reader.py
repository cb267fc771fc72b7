"""Reading YAML strictly: a config file's bytes to plain values, and one typed value.

``read_yaml(path)`` reads a config file (UTF-8 with or without a byte-order mark, or
UTF-16 with one) with PyYAML's safe loader and two changes (``Loader``); ``read_value``
reads one command-line value the same way. Anything that cannot be read is one
``ConfigError`` line naming the file, the line where known, and what to do. What the
values mean is the schema's business (``distributed.config``).
"""
import codecs
import re

import yaml


class ConfigError(ValueError):
    """A configuration the job cannot run with; the message says what to change."""


class Int(int):
    """An int read from YAML; ``text`` is how it was written."""


class Float(float):
    """A float read from YAML; ``text`` is how it was written."""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1: plain values, no Python tags), with two changes.

    Exponent notation without a dot or an exponent sign (1e-3, 5E-5, 1e2, 1.0e3) is a
    float, as in YAML 1.2, Python and every other tool; YAML 1.1 reads it as a string,
    which a float key would refuse.

    A number keeps the text it was written as (``Int``, ``Float``), so that a text key
    takes what was typed: YAML 1.1 reads ``0012`` as the octal 10 and ``12:30`` as the
    base-60 750, and the number's digits are not the text a person sees in the file.

    A key written twice in one mapping (two ``train:`` sections, ``epochs`` twice in one)
    is an error naming both lines; PyYAML would keep the last silently, so settings from
    the first would be lost without a word.
    """

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            merge = key_node.tag == 'tag:yaml.org,2002:merge'
            if merge or not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key_node.value}' is written twice (first on line "
                    f"{first[key_node.value].line + 1}); keep one, as only the last would be "
                    "used", key_node.start_mark)
            first[key_node.value] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _keep_text(kind, construct):
    def constructor(loader, node):
        value = kind(construct(loader, node))
        value.text = node.value
        return value
    return constructor


Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$'),
    list('-+.0123456789'))
Loader.add_constructor('tag:yaml.org,2002:int',
                       _keep_text(Int, yaml.SafeLoader.construct_yaml_int))
Loader.add_constructor('tag:yaml.org,2002:float',
                       _keep_text(Float, yaml.SafeLoader.construct_yaml_float))


def read_value(key, text):
    """The value of the command-line override ``key=text``, read as YAML (``Loader``);
    '' for an empty ``text``. ``ConfigError`` when YAML cannot read it."""
    if not text:
        return ''
    try:
        return yaml.load(text, Loader=Loader)
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an int of 5000 digits
        raise ConfigError(f'override {key}: cannot read {text!r} as a value '
                          f"({getattr(e, 'problem', None) or e})")


def read_yaml(path):
    """The content of the config file at ``path`` ({} when empty): UTF-8 (with or without
    a byte-order mark) or UTF-16 with one (Notepad's "Unicode"); anything else is one
    ``ConfigError`` line saying what to do."""
    name = f'config file {path}'
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f'{name} does not exist; pass an existing file with -c (see '
                          'configs/)')
    except IsADirectoryError:
        raise ConfigError(f'{name} is a folder, not a YAML file; pass a file with -c, e.g. -c '
                          'configs/smoke.yaml')
    except OSError as e:
        raise ConfigError(f'{name} cannot be read ({e.strerror or e}); pass a file you can '
                          'read with -c')
    text = _decode(raw, name)
    try:
        return yaml.load(text, Loader=Loader) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f' line {mark.line + 1}, column {mark.column + 1}:' if mark else ''
        context = f' ({e.context})' if e.problem and e.context else ''
        raise ConfigError(f'{name} is not valid YAML:{where} {e.problem or e.context}'
                          f'{context}; fix that line')
    except yaml.reader.ReaderError as e:  # a control character
        line = text.count('\n', 0, e.position) + 1
        raise ConfigError(f'{name} is not valid YAML: line {line} holds the character '
                          f'U+{e.character:04X}, which YAML does not allow; remove it')
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {' '.join(str(e).split())}")
    except ValueError as e:  # an int of more digits than Python converts
        raise ConfigError(f'{name} holds a value that cannot be read ({e})')


def _decode(raw, name):
    """The text of a config file's bytes; a ``ConfigError`` saying how to save it."""
    for bom, codec in ((codecs.BOM_UTF8, 'utf-8-sig'), (codecs.BOM_UTF16_LE, 'utf-16'),
                       (codecs.BOM_UTF16_BE, 'utf-16')):
        if raw.startswith(bom):
            break
    else:
        codec = 'utf-8'
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as e:
        text = None
        line = raw.count(b'\n', 0, e.start) + 1
        reason = (f'byte {hex(raw[e.start])} at line {line} is not UTF-8' if codec == 'utf-8'
                  else f'its UTF-16 breaks off at byte {e.start}')
    if text is not None and '\0' not in text:
        return text
    if b'\0' in raw and codec == 'utf-8':
        # Text in UTF-16 has a zero byte beside every ASCII character.
        reason = 'it holds zero bytes: UTF-16 without a byte-order mark, or not a text file'
    elif text is not None:
        reason = 'it holds zero bytes: not a text file'
    raise ConfigError(f'{name} is not UTF-8 text ({reason}); save it as UTF-8')
