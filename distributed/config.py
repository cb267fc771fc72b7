"""Configuration: one dataclass per section, defaults < YAML file < command line.

``load_config(path, overrides)`` returns a validated ``Config``. Overrides are dotted
``key.sub=value`` strings. The value of a text key (str, or a ``typing.Literal`` of strs:
a key with choices) is taken as typed (``out=0012`` is the folder '0012'); any other value is
read as YAML (``train.epochs=3``, ``optimizer.decay_epochs=[30,60]``), as the file is
(``distributed.yaml_reader``). Unknown keys, wrong types and impossible values raise
``ConfigError`` naming the key and what to do; a key's choices are read from its Literal
type, nowhere else (``check_choices``).
What a file alone cannot tell is checked where it is known: the machine (``runtime``), the
data tree (``data.sop``), the weights (``weights.load_model``).
"""
import ast
import dataclasses
import functools
import inspect
import math
import os
import textwrap
import typing

from distributed.yaml_reader import ConfigError, read_value, read_yaml

Arch = typing.Literal['resnet50', 'resnet101', 'resnet152']
"""The networks (chainercv's ResNets, arch 'fb'): the one list of them (``model`` and
``weights`` take theirs from here)."""
Dtype = typing.Literal['float32', 'mixed16']
"""Training's compute dtype (``train.dtype``; the benchmark's ``dtype``)."""
Communicator = typing.Literal['auto', 'inplace', 'naive', 'flat', 'non_cuda_aware', 'pure_nccl']
"""``comm.communicator``: 'inplace' (``comm.InPlaceMeanGrad``) or a ChainerMN communicator
that chainer 7.8's ``create_communicator`` makes (the benchmark's ``communicator`` too)."""
AllreduceDtype = typing.Literal['float32', 'float16']
"""The gradient allreduce's dtype (``comm.allreduce_dtype``; the benchmark's)."""


@dataclasses.dataclass
class DataConfig:
    root: str = 'minisop'
    """Path to a Stanford_Online_Products folder (with Ebay_train.txt), or 'minisop'
    for the small SOP-format tree the project generates on first use (``data.minisop``)."""
    crop_size: int = 224
    """Side of the square training and evaluation crops, in pixels."""
    scale_size: int = 256
    """Evaluation images are scaled so their shorter side is this, then center-cropped."""
    loader: typing.Literal['multiprocess', 'serial'] = 'multiprocess'
    """'multiprocess' (worker processes decode images) or 'serial' (in the rank itself)."""
    workers: int = 2
    """Decoding processes per iterator with loader 'multiprocess' (a rank's training and
    test iterators each have this many)."""
    on_bad_image: typing.Literal['skip', 'error'] = 'skip'
    """An image that cannot be decoded: 'skip' it (reported by name) or stop with an 'error'."""


@dataclasses.dataclass
class ModelConfig:
    arch: Arch = 'resnet50'
    """The ResNet (chainercv's, arch 'fb')."""
    zero_gamma: bool = True
    """Start the last BatchNorm gamma of every bottleneck at zero (Goyal et al. 2017)."""


@dataclasses.dataclass
class OptimizerConfig:
    lr: float = 0.1
    """Base learning rate, before scaling by lr_scaling."""
    lr_scaling: typing.Literal['workers', 'batch', 'none'] = 'workers'
    """'workers': lr x train.chunks (the recipe's workers, whatever the rank count);
    'batch': lr x global batch / 256 (Goyal et al.); 'none': lr as given."""
    momentum: float = 0.9
    """MomentumSGD momentum."""
    weight_decay: float = 1e-4
    """L2 weight decay on all parameters except BatchNorm beta and gamma."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs (0: none)."""
    warmup_start: str = '1'
    """The warm-up starts at the scaled lr x this factor in (0, 1]; 'auto' is
    min(8 / train.chunks, 1), as in chainercv's multi-node ImageNet recipe."""
    decay_epochs: typing.List[float] = dataclasses.field(default_factory=list)
    """Epochs at which the lr is multiplied by decay_factor."""
    decay_factor: float = 0.1
    """Step decay multiplier."""


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 32
    """Images per chunk: a rank's batch in a run of train.chunks ranks, which BatchNorm
    normalises on its own (the global batch is this x train.chunks)."""
    chunks: int = 0
    """Chunks per global batch: the number of workers of the recipe (lr scaling, warm-up),
    fixed for the run; 0: the rank count at the start (a resume keeps the checkpoint's).
    A run on fewer ranks, dividing it, accumulates chunks per rank."""
    split_chunks: bool = False
    """On more ranks than train.chunks (a multiple of it, dividing batch_size): split each
    chunk over ranks; BatchNorm then normalises the parts, so the run follows the
    train.chunks-rank one to a tolerance only. false: such a rank count is refused."""
    epochs: float = 90.0
    """Training length in epochs of the training split."""
    eval_batch_size: int = 0
    """Images per rank per evaluation iteration (0: same as batch_size)."""
    eval_interval: float = 1.0
    """Evaluate on the test split every this many epochs, and at the end."""
    log_interval: int = 0
    """Iterations between log lines (0: once per epoch), and one at the end; the plots have
    a point per log line."""
    seed: int = 0
    """Seed for the image order, augmentation and weight initialisation (0..2147483647)."""
    progress: bool = True
    """Show a progress bar on rank 0 when its output is a terminal (never in a file)."""
    dtype: Dtype = 'float32'
    """'float32', or 'mixed16' (chainer's mixed precision with dynamic loss scaling; for GPUs)."""
    conv_bn: typing.Literal['auto', 'cudnn', 'chainer'] = 'auto'
    """Who runs Convolution2D and BatchNorm on GPUs: 'chainer' (its own CuPy kernels), 'cudnn'
    (cuDNN through NVIDIA's cuDNN frontend, distributed.cudnn) or 'auto' (chainer's, until
    a GPU run shows the two agree)."""
    stall_timeout: float = 600.0
    """Seconds a rank may go without progress (an iteration, an evaluation batch) before it
    prints its stacks and the job stops (0: never; at most a year)."""
    startup_timeout: float = 1800.0
    """The same for start-up: from launch to the end of the first iteration (0: never; at
    most a year)."""


@dataclasses.dataclass
class CommConfig:
    communicator: Communicator = 'auto'
    """ChainerMN communicator name, or 'inplace' (distributed/comm.py); 'auto': 'inplace' on
    the CPU, 'pure_nccl' on GPUs ('flat' where NCCL is missing)."""
    allreduce_dtype: AllreduceDtype = 'float32'
    """Gradient allreduce dtype: 'float32', or 'float16' (needs the pure_nccl communicator;
    the loss is then scaled dynamically and a step whose gradients overflow is skipped)."""


@dataclasses.dataclass
class CheckpointConfig:
    interval: int = 0
    """Iterations between checkpoints (0: only at the end of each epoch)."""
    keep: int = 3
    """How many of the newest checkpoints to keep."""


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Dataset, augmentation and loading."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """Network."""
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    """MomentumSGD and its lr schedule."""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """Training loop."""
    comm: CommConfig = dataclasses.field(default_factory=CommConfig)
    """Gradient communication."""
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    """Snapshots for resuming."""
    out: str = 'results'
    """Results folder, written by rank 0 only."""
    device: str = 'auto'
    """'auto' (a GPU per rank when CuPy finds one, else the CPU), 'cpu', or a GPU id."""
    resume: str = ''
    """'' (start fresh), 'auto' (the newest checkpoint in out that reads, if any) or a
    checkpoint path."""


POSITIVE = ('data.crop_size', 'data.scale_size', 'data.workers', 'train.batch_size',
            'train.epochs', 'train.eval_interval', 'checkpoint.keep')
NON_NEGATIVE = ('optimizer.lr', 'optimizer.momentum', 'optimizer.weight_decay',
                'optimizer.warmup_epochs', 'optimizer.decay_factor', 'train.eval_batch_size',
                'train.log_interval', 'train.chunks', 'train.stall_timeout',
                'train.startup_timeout', 'checkpoint.interval')
# The weights' initialisation seeds NumPy's RandomState, which takes seeds below 2**32;
# the stream's orders and augmentations take any (SeedSequence). The bound is kept.
MAX_SEED = 2 ** 31 - 1
# The watchdog's deadlines must fit the platform's clock (Python refuses waits past
# 292 years); a year is longer than any run, and 0 turns a watchdog off.
MAX_TIMEOUT_S = 365 * 24 * 3600
TIMEOUTS = ('train.stall_timeout', 'train.startup_timeout')


# Every integer up to this is exactly a float: a float of whole value below it (1e2) is
# the int it reads as; above, the float may not be the number written.
_EXACT_INT = 2 ** 53


def choices(kind):
    """The values a ``typing.Literal`` field type allows, in order; None for other types."""
    return typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None


def _is_text(kind):
    """Whether a field of type ``kind`` holds text: str, or a Literal of strs."""
    return kind is str or all(isinstance(c, str) for c in choices(kind) or (None,))


def _convert(key, value, kind):
    """Check ``value`` against the field type ``kind``; return it as a plain value of it.

    Ints are accepted as floats, floats of whole value (1e2) as ints; a float must be
    finite: nan and inf pass every comparison a check could make and ruin the run later.
    A text key takes a number as it was written (``yaml_reader.Loader``). A Literal of
    strs is read as text here; ``validate`` checks the value is one of them.
    """
    if _is_text(kind):
        kind = str
    origin = typing.get_origin(kind)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ConfigError(f'{key} must be a list, e.g. {key}=[30,60], not {value!r}')
        return [_convert(f'{key}[{i}]', v, typing.get_args(kind)[0])
                for i, v in enumerate(value)]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    written = getattr(value, 'text', value)
    if kind is float and number:
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f'{key} must be a finite number, not {written}')
        return value
    if kind is int and isinstance(value, float):
        if value.is_integer() and abs(value) <= _EXACT_INT:
            return int(value)
        raise ConfigError(f'{key} must be an int (a whole number), not {written}')
    if kind is str and number:
        return str(written)
    if kind is str and (value is None or isinstance(value, bool)):
        raise ConfigError(f'{key} must be a str, not {value!r}: YAML reads an empty value and '
                          'null as None, and true, false, yes, no, on and off as true or '
                          'false; put the text in quotes')
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        article = 'an' if kind is int else 'a'
        raise ConfigError(f'{key} must be {article} {kind.__name__}, not {value!r}')
    return int(value) if kind is int else value


def _merge(obj, values, prefix=''):
    if not isinstance(values, dict):
        where = prefix.rstrip('.') or 'the config file'
        raise ConfigError(f'{where} must be a mapping of keys, not {values!r}')
    hints = typing.get_type_hints(type(obj))
    for name, value in values.items():
        key = prefix + str(name)
        if name not in hints:
            known = ', '.join(prefix + f for f in hints)
            raise ConfigError(f'unknown config key {key!r}; known keys here: {known}')
        if dataclasses.is_dataclass(hints[name]):
            _merge(getattr(obj, name), value, key + '.')
        else:
            setattr(obj, name, _convert(key, value, hints[name]))


def _leaf_type(schema, key):
    """The field type of the dotted ``key`` in the dataclass ``schema``; None when it is
    not a leaf key there (a section, or unknown: ``_merge`` says which)."""
    kind = schema
    for part in key.split('.'):
        if not dataclasses.is_dataclass(kind):
            return None
        kind = typing.get_type_hints(kind).get(part)
    return None if dataclasses.is_dataclass(kind) else kind


def parse_overrides(overrides, schema=None):
    """``['a.b=1', ...]`` -> nested dict. A text key of ``schema`` takes the value as
    typed; other values are read as YAML (``yaml_reader.read_value``)."""
    tree = {}
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'override {item!r} is not key=value (e.g. train.epochs=3)')
        kind = None if schema is None else _leaf_type(schema, key)
        if kind is not None and _is_text(kind):
            # YAML would rewrite what was typed: out=0012 -> 10, out=12:30 -> 750.
            value = text
        else:
            value = read_value(key, text)
        node = tree
        parts = key.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override {key} conflicts with another override')
        node[parts[-1]] = value
    return tree


def build(schema, path=None, overrides=()):
    """An instance of the dataclass ``schema``: defaults < YAML at ``path`` < overrides.
    Types are checked here, a Literal field's value by ``validate``."""
    obj = schema()
    where = ''
    try:
        if path:
            where = f' (in {path})'
            _merge(obj, read_yaml(path))
        where = ' (on the command line)'
        _merge(obj, parse_overrides(overrides, schema))
    except ConfigError as e:
        if str(e).startswith('config file'):
            raise
        raise ConfigError(str(e) + where)
    return obj


def _get(config, key):
    for part in key.split('.'):
        config = getattr(config, part)
    return config


def check_choices(config, prefix=''):
    """Every Literal field of the dataclass instance ``config`` (sections included) holds
    one of its values; ``ConfigError`` naming the key and the values otherwise."""
    for name, kind in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(kind):
            check_choices(value, f'{prefix}{name}.')
        elif choices(kind) and value not in choices(kind):
            raise ConfigError(f"{prefix}{name} must be one of {', '.join(choices(kind))}, "
                              f'not {value!r}')


def validate(config):
    """Invariants of a training config, checked once at load."""
    check_choices(config)
    for key in POSITIVE:
        if not _get(config, key) > 0:
            raise ConfigError(f'{key} must be positive, not {_get(config, key)!r}')
    for key in NON_NEGATIVE:
        if _get(config, key) < 0:
            raise ConfigError(f'{key} must be zero or positive, not {_get(config, key)!r}')
    if config.data.scale_size < config.data.crop_size:
        raise ConfigError(f'data.scale_size ({config.data.scale_size}) must be at least '
                          f'data.crop_size ({config.data.crop_size})')
    if config.optimizer.warmup_start != 'auto' and not _in_unit(config.optimizer.warmup_start):
        raise ConfigError("optimizer.warmup_start must be 'auto' or in (0, 1], not "
                          f'{config.optimizer.warmup_start!r}')
    if sorted(config.optimizer.decay_epochs) != config.optimizer.decay_epochs:
        raise ConfigError('optimizer.decay_epochs must be increasing, not '
                          f'{config.optimizer.decay_epochs}')
    if config.device not in ('auto', 'cpu') and not config.device.isdigit():
        raise ConfigError("device must be 'auto', 'cpu' or a GPU id like 0, not "
                          f'{config.device!r}')
    if not config.data.root:
        raise ConfigError('data.root is empty; give the path to Stanford_Online_Products '
                          '(data.root=/path/to/Stanford_Online_Products) or minisop')
    check_seed('train.seed', config.train.seed)
    for key in TIMEOUTS:
        if _get(config, key) > MAX_TIMEOUT_S:
            raise ConfigError(f'{key} must be at most {MAX_TIMEOUT_S} (a year), not '
                              f'{_get(config, key)}; 0 turns the watchdog off')
    check_folder('out', config.out)
    return config


def check_seed(key, seed):
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f'{key} must be within 0..{MAX_SEED}, not {seed}')


def check_folder(key, path):
    """A results folder that can be made: ``path`` names no file, nor is it below one."""
    if not path:
        raise ConfigError(f'{key} is empty; name a results folder, e.g. {key}=results/run1')
    blocking = _file_in_the_way(path)
    if blocking == os.path.abspath(path):
        raise ConfigError(f'{key} {path} is a file, not a folder; name a results folder, '
                          f'e.g. {key}=results/run1, or move the file away')
    if blocking:
        raise ConfigError(f'{key} {path} cannot be a folder: {blocking} is a file; name '
                          f'another results folder, e.g. {key}=results/run1')


def _file_in_the_way(path):
    """The nearest of ``path`` and the folders above it that exists and is not a folder
    (a file, a broken link), where the results folder would have to be made; or None."""
    probe = os.path.abspath(path)
    while not os.path.isdir(probe):
        if os.path.lexists(probe):
            return probe
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    return None


def _in_unit(text):
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


def load_config(path=None, overrides=()):
    """The validated training ``Config``."""
    return validate(build(Config, path, overrides))


def to_dict(config):
    return dataclasses.asdict(config)


def describe(schema=Config, prefix=''):
    """``[(key, kind, default, meaning)]`` for every leaf key of the dataclass ``schema``
    (field order, sections expanded): the field type, its default, and the text of the
    string literal under the field (inherited fields' from the class that declares them)."""
    rows = []
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        key = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            rows += describe(hints[field.name], key + '.')
        else:
            default = (field.default_factory() if field.default is dataclasses.MISSING
                       else field.default)
            rows.append((key, hints[field.name], default, field_doc(schema, field.name)))
    return rows


def field_doc(schema, name):
    """The string literal under the field ``name`` of the dataclass ``schema`` (or of the
    base class that declares it), whitespace collapsed; '' when it has none. Python keeps
    no such literal at run time: it is read from the source."""
    for cls in schema.__mro__:
        if name in vars(cls).get('__annotations__', {}):
            return _field_docs(cls).get(name, '')
    return ''


@functools.lru_cache(maxsize=None)
def _field_docs(cls):
    """``{field name: its string literal}`` of the class ``cls``, read from its source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {field.target.id: ' '.join(doc.value.value.split())
            for field, doc in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}
