"""The benchmark's settings (``BenchConfig``), read and checked as training's are."""
import dataclasses

from distributed import config as config_module


@dataclasses.dataclass
class BenchConfig:
    arch: config_module.Arch = 'resnet50'
    """The network, as training's model.arch."""
    crop_size: int = 64
    """Side of the synthetic training images, in pixels."""
    batch_size: int = 16
    """Images per rank per iteration."""
    iterations: int = 10
    """Timed training iterations."""
    warmup: int = 2
    """Untimed iterations first (at least 1: the first update only broadcasts weights)."""
    dtype: config_module.Dtype = 'float32'
    """'float32' or 'mixed16', as training's train.dtype (float16 activations and conv/linear
    weights, float32 master weights, dynamic loss scaling)."""
    communicator: config_module.Communicator = 'auto'
    """ChainerMN communicator name, or 'inplace'; 'auto' as in training."""
    allreduce_dtype: config_module.AllreduceDtype = 'float32'
    """Gradient allreduce dtype: 'float32' or 'float16' (pure_nccl only)."""
    allreduce_rounds: int = 10
    """Rounds of the allreduce comparison (each round runs every pattern once)."""
    pipeline_images: int = 32
    """JPEGs generated for the input-pipeline comparison (0: skip it)."""
    pipeline_rounds: int = 3
    """Passes over those JPEGs per path, interleaved."""
    pipeline_crop: int = 224
    """Output side of the input-pipeline comparison."""
    pipeline_noise: float = 1.0
    """Per-pixel noise of the generated JPEGs, in grey levels: 1 makes them weigh about
    what SOP's photos weigh (24 KB on average); 12 makes them four times heavier."""
    device: str = 'auto'
    """'auto', 'cpu' or a GPU id, as in training."""
    seed: int = 0
    """Seed of the synthetic data and the generated JPEGs (0..2147483647)."""
    out: str = 'results/benchmark'
    """Folder of benchmark.json (rank 0 writes it)."""


POSITIVE = ('crop_size', 'batch_size', 'iterations', 'warmup', 'allreduce_rounds',
            'pipeline_rounds', 'pipeline_crop')


def load_bench_config(path=None, overrides=()):
    """The validated ``BenchConfig``: defaults < YAML at ``path`` < key=value overrides."""
    config = config_module.build(BenchConfig, path, overrides)
    config_module.check_choices(config)
    for key in POSITIVE:
        if getattr(config, key) <= 0:
            value = getattr(config, key)
            raise config_module.ConfigError(f'{key} must be positive, not {value!r}')
    if config.pipeline_noise < 0:
        raise config_module.ConfigError('pipeline_noise must be 0 or more, not {!r}'.format(
            config.pipeline_noise))
    if config.pipeline_images < 0:
        raise config_module.ConfigError('pipeline_images must be 0 or more, not {!r}'.format(
            config.pipeline_images))
    # Synthetic data and JPEGs are drawn with seed + rank, as training draws.
    config_module.check_seed('seed', config.seed)
    # The training schema checks arch, dtype, device and out; reuse it rather than repeat it.
    config_module.validate(training_config(config))
    return config


def training_config(bench):
    """The training ``Config`` the runtime, model and optimizer are built from."""
    config = config_module.Config()
    config.model.arch = bench.arch
    config.data.crop_size = bench.crop_size
    config.data.scale_size = max(bench.crop_size, config.data.scale_size)
    config.data.loader = 'serial'
    config.train.batch_size = bench.batch_size
    config.train.dtype = bench.dtype
    config.comm.communicator = bench.communicator
    config.comm.allreduce_dtype = bench.allreduce_dtype
    config.device = bench.device
    config.out = bench.out
    return config
