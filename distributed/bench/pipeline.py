"""The input pipeline measured (per core): chainercv's default path (decode to float32,
random-sized crop, resize, flip, mean) against the product's ``TrainTransform`` on file
paths, and bare full-size decodes of the same JPEGs by Pillow and by the product's decoder
(simplejpeg), rounds interleaved; and how far the product's output is from Pillow's
antialiased resize of the same crop box, in grey levels."""
import math
import os
import shutil
import tempfile
import time

import numpy

from distributed.data.transforms import TrainTransform


PIPELINE_SIZES = (300, 640)
"""Side range of the generated JPEGs: the sizes of Stanford Online Products photos."""


SOP_MEAN_JPEG_KB = 2.9e6 / 120053
"""SOP's mean file size in KB: 2.9 GB of JPEGs for 120,053 images."""


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
        path = os.path.join(folder, f'{i:04d}.JPG')
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
