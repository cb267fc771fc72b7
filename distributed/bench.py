"""Throughput and communication measurements: ``launch.benchmark`` runs ``run_benchmark``.

Three measurements, each next to its baseline from the same run:
- training: ResNet steps on synthetic in-memory data through the product's runtime,
  multi-node optimizer and communicator; each step split into data wait, forward,
  backward, waiting for the slowest rank, gradient allreduce and update;
- allreduce: the product's ``multi_node_mean_grad`` of the model's real gradients against
  raw mpi4py ``Allreduce`` of the same bytes (one flat buffer, and one call per array) and
  against ChainerMN's stock ``naive`` communicator, rounds interleaved;
- input pipeline (per core): chainercv's default path (decode to float32, random-sized
  crop, resize, flip, mean) against the product's ``TrainTransform`` on file paths, and
  bare full-size decodes of the same JPEGs by Pillow and by the product's decoder
  (simplejpeg), rounds interleaved; and how far the product's output is from Pillow's
  antialiased resize of the same crop box, in grey levels.
"""
import dataclasses
import math
import os
import platform
import shutil
import tempfile
import time

import chainer
import numpy

from distributed import config as config_module
from distributed.data.transforms import TrainTransform

PIPELINE_SIZES = (300, 640)
"""Side range of the generated JPEGs: the sizes of Stanford Online Products photos."""
SOP_MEAN_JPEG_KB = 2.9e6 / 120053
"""SOP's mean file size in KB: 2.9 GB of JPEGs for 120,053 images."""


@dataclasses.dataclass
class BenchConfig:
    arch: str = 'resnet50'
    """'resnet50', 'resnet101' or 'resnet152'."""
    crop_size: int = 64
    """Side of the synthetic training images, in pixels."""
    batch_size: int = 16
    """Images per rank per iteration."""
    iterations: int = 10
    """Timed training iterations."""
    warmup: int = 2
    """Untimed iterations first (at least 1: the first update only broadcasts weights)."""
    dtype: str = 'float32'
    """'float32' or 'mixed16', as training's train.dtype (float16 activations and conv/linear
    weights, float32 master weights, dynamic loss scaling)."""
    communicator: str = 'auto'
    """ChainerMN communicator name, or 'inplace'; 'auto' as in training."""
    allreduce_dtype: str = 'float32'
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
    for key in POSITIVE:
        if getattr(config, key) <= 0:
            raise config_module.ConfigError('{} must be positive, not {!r}'.format(
                key, getattr(config, key)))
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


def _synchronizer(device):
    if isinstance(device, chainer.backend.GpuDevice):
        return device.device.synchronize
    return lambda: None


class _TimedComm:
    """The communicator, with the time spent in ``multi_node_mean_grad`` added up.

    A barrier first separates the two things a rank's allreduce call would otherwise lump
    together: waiting for the slower ranks to finish their backward (``wait_seconds``, a
    cost of compute imbalance that synchronous SGD pays whatever the network) and the
    communication itself (``seconds``).
    """

    def __init__(self, comm, sync):
        self._comm = comm
        self._sync = sync
        self.seconds = self.wait_seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def multi_node_mean_grad(self, model, zero_fill=False):
        self._sync()
        arrived = time.perf_counter()
        self._comm.mpi_comm.Barrier()
        start = time.perf_counter()
        self._comm.multi_node_mean_grad(model, zero_fill)
        self._sync()
        self.wait_seconds += start - arrived
        self.seconds += time.perf_counter() - start


def measure_training(config, runtime, model):
    """Mean seconds per iteration of each part of a training step on this rank."""
    from distributed.comm import loss_function
    from distributed.model import mean_of
    from distributed.optim import create_optimizer
    from distributed.data.converter import InputConverter
    sync = _synchronizer(runtime.device)
    rng = numpy.random.RandomState(config.seed + runtime.rank)
    # uint8 images, as the transforms make them; the converter normalises them on the
    # device, so its cost is in the 'data' part.
    pool = [(rng.randint(0, 256, (3, config.crop_size, config.crop_size)).astype(numpy.uint8),
             numpy.int32(rng.randint(12))) for _ in range(2 * config.batch_size)]
    iterator = chainer.iterators.SerialIterator(pool, config.batch_size)
    converter = InputConverter(mean_of(model))
    comm = _TimedComm(runtime.comm, sync)
    optimizer = create_optimizer(training_config(config), model, comm, lambda iteration: 0.1)
    actual = optimizer.actual_optimizer
    times = {'forward': 0.0, 'update': 0.0}

    def timed(part, function):
        def call(*args, **kwargs):
            sync()
            start = time.perf_counter()
            result = function(*args, **kwargs)
            sync()
            times[part] += time.perf_counter() - start
            return result
        return call

    # The plain optimizer's update is what the multi-node optimizer calls after the
    # allreduce; shadowing it on this instance times it without changing it.
    actual.update = timed('update', actual.update)
    lossfun = timed('forward', loss_function(comm, model))
    rows = []
    for i in range(config.warmup + config.iterations):
        comm.seconds = comm.wait_seconds = times['forward'] = times['update'] = 0.0
        start = time.perf_counter()
        x, t = converter(iterator.next(), runtime.device)
        sync()
        fetched = time.perf_counter()
        optimizer.update(lossfun, x, t)
        sync()
        end = time.perf_counter()
        runtime.watchdog.progress('benchmark iteration {}'.format(i + 1))
        if i >= config.warmup:
            rest = end - fetched
            rows.append({
                'data': fetched - start, 'forward': times['forward'],
                'backward': (rest - times['forward'] - times['update'] - comm.seconds
                             - comm.wait_seconds),
                'wait': comm.wait_seconds, 'allreduce': comm.seconds,
                'update': times['update'], 'step': end - start})
    del actual.update
    return {key: float(numpy.mean([row[key] for row in rows])) for key in rows[0]}


def _rounds(mpi_comm, patterns, rounds):
    """Median over ``rounds`` of each pattern's slowest-rank time; patterns interleave."""
    from mpi4py import MPI
    samples = {name: [] for name in patterns}
    for _ in range(rounds):
        for name, function in patterns.items():
            mpi_comm.Barrier()
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    result = {}
    for name, values in samples.items():
        slowest = numpy.array(values, numpy.float64)
        mpi_comm.Allreduce(MPI.IN_PLACE, slowest, op=MPI.MAX)
        result[name] = float(numpy.median(slowest))
    return result


def measure_allreduce(config, runtime, model):
    """Seconds per gradient allreduce: the product's, stock naive's, and raw MPI's."""
    from mpi4py import MPI
    import chainermn
    mpi_comm = runtime.comm.mpi_comm
    sync = _synchronizer(runtime.device)
    grads = [chainer.backend.CpuDevice().send(param.grad)
             for _, param in sorted(model.namedparams()) if param.grad is not None]
    flat = numpy.concatenate([g.ravel() for g in grads])

    predivides = hasattr(runtime.comm, 'predivided')

    def product():
        if predivides:
            # As in training, whose loss was divided by the ranks (comm.loss_function).
            runtime.comm.grads_predivided = True
        runtime.comm.multi_node_mean_grad(model)
        sync()

    def raw_flat():
        mpi_comm.Allreduce(MPI.IN_PLACE, flat)

    def raw_arrays():
        for grad in grads:
            mpi_comm.Allreduce(MPI.IN_PLACE, grad)

    patterns = {'product': product, 'raw_flat': raw_flat, 'raw_arrays': raw_arrays}
    naive = None
    if runtime.device.xp is numpy and type(runtime.comm).__name__ != 'NaiveCommunicator':
        naive = chainermn.create_communicator('naive', mpi_comm=mpi_comm)
        patterns['naive'] = lambda: naive.multi_node_mean_grad(model)
    if config.allreduce_dtype == 'float32' and runtime.device.xp is not numpy:
        try:
            half = chainermn.create_communicator('pure_nccl', mpi_comm=mpi_comm,
                                                 allreduce_grad_dtype='float16')
            patterns['fp16'] = lambda: (half.multi_node_mean_grad(model), sync())
        except Exception:
            pass
    times = _rounds(mpi_comm, patterns, config.allreduce_rounds)
    raw = min(times['raw_flat'], times['raw_arrays'])
    return {
        'allreduce_s': times['product'],
        'allreduce_raw_s': raw,
        'allreduce_raw_flat_s': times['raw_flat'],
        'allreduce_raw_arrays_s': times['raw_arrays'],
        'allreduce_naive_s': times.get('naive'),
        'allreduce_fp16_s': times.get('fp16'),
        'allreduce_ratio': times['product'] / raw if raw else 1.0,
        'allreduce_naive_ratio': times['naive'] / raw if raw and 'naive' in times else None,
        'allreduce_bytes': int(flat.nbytes),
        'allreduce_arrays': len(grads),
    }


def write_jpegs(folder, count, seed=0, sizes=PIPELINE_SIZES, noise=12.0):
    """``count`` photo-like JPEGs of SOP sizes (sides in ``sizes``), a few grayscale, with
    per-pixel noise of standard deviation ``noise`` grey levels."""
    from PIL import Image
    rng = numpy.random.RandomState(seed)
    paths = []
    for i in range(count):
        width, height = (int(v) for v in rng.randint(sizes[0], sizes[1] + 1, size=2))
        y, x = numpy.mgrid[0:height, 0:width].astype(numpy.float32)
        phase = rng.uniform(0, 6.3, 3)
        channels = [127 + 100 * numpy.sin(x / rng.uniform(20, 80) + y / rng.uniform(20, 80)
                                          + p) for p in phase]
        pixels = numpy.stack(channels, -1) + rng.normal(0, noise, (height, width, 1))
        image = Image.fromarray(numpy.clip(pixels, 0, 255).astype(numpy.uint8))
        if i % 8 == 7:
            image = image.convert('L')
        path = os.path.join(folder, '{:04d}.JPG'.format(i))
        image.save(path, quality=90)
        paths.append(path)
    return paths


def decode_fast(path):
    """The whole JPEG decoded by simplejpeg, the product's decoder, to RGB uint8 HWC: the
    floor of the product's path (reading the file and one full-size decode)."""
    import simplejpeg
    with open(path, 'rb') as f:
        return simplejpeg.decode_jpeg(f.read(), colorspace='RGB')


def pipeline_diff_grey(paths, crop, seed):
    """Mean absolute difference, in grey levels, of the product's ``crop`` x ``crop`` RGB
    output from Pillow's antialiased bilinear resize of the same box of the same picture,
    over random-sized crop boxes drawn as training draws them (one per file)."""
    from PIL import Image
    from distributed.data import images, transforms
    rng = numpy.random.default_rng(seed)
    diffs = []
    for path in paths:
        picture = images.open_image(path)
        box = transforms.train_box(picture.height, picture.width, rng)
        product = picture.region(box, (crop, crop)).astype(numpy.float32)
        with Image.open(path) as image:
            reference = numpy.asarray(image.convert('RGB').resize(
                (crop, crop), Image.BILINEAR, box=box), numpy.float32)
        diffs.append(float(numpy.abs(product - reference).mean()))
    return float(numpy.mean(diffs))


def decode_full(path):
    """The whole JPEG decoded by Pillow to RGB uint8 HWC: the floor any full-size Pillow
    reader pays (one decode and the one copy into an array; a conversion only for non-RGB
    files)."""
    from PIL import Image
    with Image.open(path) as image:
        rgb = image if image.mode == 'RGB' else image.convert('RGB')
        return numpy.asarray(rgb)


def chainercv_train_transform(path, crop_size, mean):
    """chainercv's default training path, as the tutorial wrote it: the baseline."""
    from chainercv import transforms, utils
    img = utils.read_image(path, color=True)
    img = transforms.random_sized_crop(img)
    img = transforms.resize(img, (crop_size, crop_size))
    img = transforms.random_flip(img, x_random=True)
    img -= mean
    return img


def _each(function, items):
    for item in items:
        function(item)


def measure_pipeline(config, runtime, mean):
    """Images per second on one core for each input path (mean over ranks).

    The product's path ends with uint8 images; the float conversion and the mean
    subtraction that chainercv's path does per image happen per batch in the converter,
    on the device. That batched step is timed on this core too ('normalise'), for what
    it costs where the device is the CPU.
    """
    from distributed.data.converter import InputConverter
    folder = tempfile.mkdtemp(prefix='bench_jpegs_')
    try:
        paths = write_jpegs(folder, config.pipeline_images, config.seed + runtime.rank,
                            noise=config.pipeline_noise)
        kilobytes = numpy.mean([os.path.getsize(p) for p in paths]) / 1e3
        crop = config.pipeline_crop
        diff = pipeline_diff_grey(paths, crop, config.seed + runtime.rank)
        product = TrainTransform(crop)
        converter = InputConverter(mean)
        batches = [[product((p, 0)) for p in paths[i:i + 32]] for i in range(0, len(paths), 32)]
        # Each result is dropped before the next is made, as a loader hands it on: a
        # list of 48 full-size decodes would time fresh memory being mapped, not decoding.
        paths_of = {
            'baseline': lambda: _each(lambda p: chainercv_train_transform(p, crop, mean), paths),
            'product': lambda: _each(lambda p: product((p, 0)), paths),
            'decode': lambda: _each(decode_full, paths),
            'decode_fast': lambda: _each(decode_fast, paths),
            'normalise': lambda: _each(converter, batches),
        }
        samples = {name: [] for name in paths_of}
        for _ in range(config.pipeline_rounds):
            for name, function in paths_of.items():
                start = time.perf_counter()
                function()
                samples[name].append(len(paths) / (time.perf_counter() - start))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    mpi_comm = runtime.comm.mpi_comm
    rate = {name: mpi_comm.allreduce(float(numpy.median(v))) / mpi_comm.size
            for name, v in samples.items()}
    # Both on one CPU core, one after the other: what a CPU-only run pays per image.
    cpu_rate = 1.0 / (1.0 / rate['product'] + 1.0 / rate['normalise'])
    return {
        'pipeline_img_per_sec': rate['product'],
        'pipeline_baseline_img_per_sec': rate['baseline'],
        'pipeline_speedup': rate['product'] / rate['baseline'],
        'decode_img_per_sec': rate['decode'],
        'pipeline_vs_decode': rate['product'] / rate['decode'],
        'decode_fast_img_per_sec': rate['decode_fast'],
        'pipeline_vs_decode_fast': rate['product'] / rate['decode_fast'],
        'pipeline_diff_grey': mpi_comm.allreduce(diff) / mpi_comm.size,
        'normalise_img_per_sec': rate['normalise'],
        'pipeline_cpu_normalised_img_per_sec': cpu_rate,
        'pipeline_cpu_normalised_speedup': cpu_rate / rate['baseline'],
        'cores_for_1000_img_per_sec': math.ceil(1000 / rate['product']),
        'cores_for_3000_img_per_sec': math.ceil(3000 / rate['product']),
        'pipeline_crop': crop,
        'pipeline_images': len(paths),
        'pipeline_jpeg_kb': mpi_comm.allreduce(float(kilobytes)) / mpi_comm.size,
    }


def _mpi_library():
    from mpi4py import MPI
    return MPI.Get_library_version().strip().splitlines()[0]


def run_benchmark(config, runtime, progress=None):
    """Every measurement, on every rank; the returned dict is the same on all ranks.

    ``progress(text)``, when given, is told as each measurement starts.
    """
    from mpi4py import MPI
    from distributed.model import create_model
    say = progress or (lambda text: None)
    model = create_model(config.arch)
    mean = chainer.backend.CpuDevice().send(model.predictor.mean)
    model.to_device(runtime.device)
    mpi_comm = runtime.comm.mpi_comm
    say('training: {} + {} iterations of {} x {} px'.format(
        config.warmup, config.iterations, config.batch_size, config.crop_size))
    parts = measure_training(config, runtime, model)
    slowest = {key: mpi_comm.allreduce(value, op=MPI.MAX) for key, value in parts.items()}
    total = mpi_comm.allreduce(config.batch_size / parts['step'])
    result = {
        'ranks': runtime.size,
        'images_per_sec': total,
        'images_per_sec_per_rank': total / runtime.size,
        'step_s': slowest['step'],
        'parts_s': slowest,
        'exposed_comm_share': slowest['allreduce'] / slowest['step'],
        'wait_share': slowest['wait'] / slowest['step'],
        'communicator': type(runtime.comm).__name__,
    }
    say('gradient allreduce: {} rounds of each pattern'.format(config.allreduce_rounds))
    result.update(measure_allreduce(config, runtime, model))
    runtime.watchdog.progress('the allreduce measurement')
    if config.pipeline_images:
        say('input pipeline: {} JPEGs, {} rounds of each path'.format(
            config.pipeline_images, config.pipeline_rounds))
        result.update(measure_pipeline(config, runtime, mean))
    runtime.watchdog.stop()
    result.update({
        'machine': {'host': platform.node(), 'cpus': os.cpu_count(),
                    'processor': platform.processor() or platform.machine(),
                    'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
                    'mpi': _mpi_library(), 'device': str(runtime.device)},
        'config': dataclasses.asdict(config),
    })
    return result


def format_table(result):
    """The readable report of ``run_benchmark``'s result."""
    ms = 1000.0
    parts = result['parts_s']
    lines = [
        'ResNet training, {ranks} rank(s), {communicator}: {images_per_sec:.1f} img/s total, '
        '{images_per_sec_per_rank:.1f} img/s per rank (mean)'.format(**result),
        '  step {:.1f} ms: data {:.1f}, forward {:.1f}, backward {:.1f}, waiting for the '
        'slowest rank {:.1f}, allreduce {:.1f}, update {:.1f} (each the slowest rank\'s)'
        .format(*(parts[k] * ms for k in ('step', 'data', 'forward', 'backward', 'wait',
                                          'allreduce', 'update'))),
        '  exposed communication {:.1%} of the step; waiting for the slowest rank {:.1%}'
        .format(result['exposed_comm_share'], result['wait_share']),
        'Gradient allreduce, {:.1f} MB in {} arrays (median of slowest rank):'.format(
            result['allreduce_bytes'] / 1e6, result['allreduce_arrays'])]
    if result['ranks'] == 1:
        lines.append('  one rank: nothing to reduce (the ratios mean something from 2 ranks)')
    else:
        lines.append('  product {:.1f} ms | raw flat {:.1f} ms | raw per-array {:.1f} ms | '
                     'product / best raw {:.2f}x'.format(
                         result['allreduce_s'] * ms, result['allreduce_raw_flat_s'] * ms,
                         result['allreduce_raw_arrays_s'] * ms, result['allreduce_ratio']))
    if result['allreduce_naive_s'] is not None and result['ranks'] > 1:
        lines.append('  chainermn naive {:.1f} ms ({:.2f}x best raw)'.format(
            result['allreduce_naive_s'] * ms, result['allreduce_naive_ratio']))
    if result['allreduce_fp16_s'] is not None:
        lines.append('  pure_nccl float16 {:.1f} ms'.format(result['allreduce_fp16_s'] * ms))
    if 'pipeline_img_per_sec' in result:
        lines += [
            'Input pipeline, {pipeline_crop} px crops of {pipeline_images} SOP-sized JPEGs '
            '({:.0f} KB on average; SOP\'s photos: {:.0f} KB), img/s per core:'.format(
                result['pipeline_jpeg_kb'], SOP_MEAN_JPEG_KB, **result),
            '  product {pipeline_img_per_sec:.0f} | chainercv default '
            '{pipeline_baseline_img_per_sec:.0f} ({pipeline_speedup:.2f}x) | bare full-size '
            'decode: Pillow {decode_img_per_sec:.0f} ({pipeline_vs_decode:.2f}x), simplejpeg '
            '{decode_fast_img_per_sec:.0f} ({pipeline_vs_decode_fast:.2f}x)'.format(**result),
            '  the product\'s output differs from Pillow\'s antialiased resize of the same box '
            'by {pipeline_diff_grey:.2f} grey levels (mean absolute)'.format(**result),
            '  the product leaves uint8 images; its batched float conversion and mean run on '
            'the device at {normalise_img_per_sec:.0f} img/s per CPU core, so with a CPU as the '
            'device: {pipeline_cpu_normalised_img_per_sec:.0f} '
            '({pipeline_cpu_normalised_speedup:.2f}x chainercv)'.format(**result),
            '  cores to feed one GPU: {cores_for_1000_img_per_sec} at 1,000 img/s, '
            '{cores_for_3000_img_per_sec} at 3,000 img/s'.format(**result)]
    return '\n'.join(lines)


def scaling_report(results, png=None):
    """A table of img/s and scaling efficiency against ranks (and a plot at ``png``)."""
    base = results[0]['images_per_sec'] / results[0]['ranks']
    rows = ['ranks  img/s total  img/s/rank  efficiency  allreduce ms  exposed comm  '
            'wait ms',
            '-----  -----------  ----------  ----------  ------------  ------------  '
            '-------']
    efficiency = []
    for r in results:
        efficiency.append(r['images_per_sec'] / (r['ranks'] * base))
        rows.append('{:5d}  {:11.1f}  {:10.1f}  {:9.0%}  {:12.1f}  {:11.1%}  {:7.1f}'.format(
            r['ranks'], r['images_per_sec'], r['images_per_sec'] / r['ranks'],
            efficiency[-1], r['parts_s']['allreduce'] * 1000, r['exposed_comm_share'],
            r['parts_s']['wait'] * 1000))
    if png:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        ranks = [r['ranks'] for r in results]
        fig, left = plt.subplots(figsize=(6, 4))
        left.plot(ranks, [r['images_per_sec'] for r in results], 'o-', label='img/s')
        left.plot(ranks, [base * n for n in ranks], ':', color='gray', label='linear')
        left.set_xlabel('ranks')
        left.set_ylabel('images/s (total)')
        left.set_xticks(ranks)
        right = left.twinx()
        right.plot(ranks, [e * 100 for e in efficiency], 's--', color='C1',
                   label='efficiency')
        right.set_ylabel('scaling efficiency (%)')
        right.set_ylim(0, max(110, 10 + 100 * max(efficiency)))
        fig.legend(loc='upper left', bbox_to_anchor=(0.12, 0.95))
        fig.tight_layout()
        fig.savefig(png)
        plt.close(fig)
    return '\n'.join(rows)


STEP_PARTS = ('data', 'forward', 'backward', 'wait', 'allreduce', 'update')


def breakdown_plot(results, png):
    """A picture of where the time goes: each step's parts at each rank count (left) and
    the input paths per core of the last run (right)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    ranks = ['{} rank{}'.format(r['ranks'], 's' if r['ranks'] > 1 else '') for r in results]
    start = numpy.zeros(len(results))
    for part in STEP_PARTS:
        ms = numpy.array([r['parts_s'][part] * 1000 for r in results])
        left.barh(ranks, ms, left=start, label=part)
        start += ms
    left.set_xlabel('ms per training step (slowest rank per part)')
    left.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=len(STEP_PARTS),
                frameon=False, handlelength=1.2, columnspacing=0.8)
    last = results[-1]
    if 'pipeline_img_per_sec' in last:
        paths = {'chainercv default': last['pipeline_baseline_img_per_sec'],
                 'product (uint8 out)': last['pipeline_img_per_sec'],
                 'product + normalising on a CPU': last['pipeline_cpu_normalised_img_per_sec'],
                 'bare full-size decode, Pillow': last['decode_img_per_sec'],
                 'bare full-size decode, simplejpeg': last['decode_fast_img_per_sec']}
        right.barh(list(paths), list(paths.values()), color=['gray', 'C0', 'C9', 'C7', 'C8'])
        right.set_xlabel('images/s per core, {} px crops'.format(last['pipeline_crop']))
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
