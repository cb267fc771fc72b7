"""Decode-and-augment from a file path: crop first, decode small, resize on uint8.

chainercv's default path decodes the whole JPEG into float32, crops, resizes every channel
in float and then subtracts the mean: three full-size float passes for a 224 px result.
Here the crop geometry is drawn first (by chainercv itself, from the image's header size,
so the distribution and the random-number use are chainercv's), the JPEG is decoded at
the smallest DCT scale (1/2, 1/4, 1/8) that still covers the crop at full resolution
(PIL's ``Image.draft``), the crop box is resized to the output in one uint8 pass
(``Image.resize(box=...)``, whose filter still reads pixels beyond the box, like resizing
the whole image would), and only the final crop is flipped. The result stays uint8: the
float conversion and the mean subtraction happen once per batch, on the device
(``runtime.InputConverter``), and a batch crosses from loader processes and to the GPU
in a quarter of float32's bytes.
"""
import math

import numpy
from chainercv import transforms
from PIL import Image

SCALE_RATIO_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def _decode_box(image, box, out_size):
    """Decode ``image`` reduced as far as ``box`` (x0, y0, x1, y1, full-size pixels) keeps
    at least ``out_size`` pixels per side; return the RGB image and the box in its pixels."""
    width, height = image.size
    if image.format == 'JPEG':
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        factor = min(box_w / out_size[0], box_h / out_size[1])
        if factor >= 2:
            image.draft('RGB', (math.ceil(width / factor), math.ceil(height / factor)))
    # The DCT scale is a power of two; the reduced size is rounded up, so the ratio of
    # sizes is not the scale and would shift the box towards the far edges.
    scale = 1.0 / round(width / image.size[0])
    sx = sy = scale
    if image.mode != 'RGB':
        image = image.convert('RGB')
    return image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _to_chw(image, x_flip=False):
    """The RGB ``image`` as a contiguous (3, H, W) uint8 array, mirrored if ``x_flip``."""
    if x_flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return numpy.stack([numpy.asarray(channel) for channel in image.split()])


def train_image(path, crop_size):
    """``(3, crop_size, crop_size)`` uint8: random-sized crop (scale 0.08-1, aspect 3/4-4/3),
    resize, random horizontal flip; as chainercv's transforms draw them."""
    with Image.open(path) as image:
        width, height = image.size
        # chainercv draws the crop from the shape alone; an empty array of that shape
        # gives its exact sampling without decoding anything.
        _, param = transforms.random_sized_crop(
            numpy.empty((0, height, width), numpy.uint8), SCALE_RATIO_RANGE,
            ASPECT_RATIO_RANGE, return_param=True)
        ys, xs = param['y_slice'], param['x_slice']
        box = (xs.start, ys.start, xs.stop, ys.stop)
        size = (crop_size, crop_size)
        decoded, box = _decode_box(image, box, size)
        # reducing_gap 3: an integer box reduction first, then bilinear over the last
        # factor of at least 3, which PIL documents as indistinguishable from fair
        # resampling in most cases, at a fraction of the cost for large crops.
        out = decoded.resize(size, Image.BILINEAR, box=box, reducing_gap=3.0)
    _, flip = transforms.random_flip(numpy.empty((0, 1, 1)), x_random=True, return_param=True)
    return _to_chw(out, flip['x_flip'])


def val_geometry(height, width, scale_size, crop_size):
    """The center crop box in full-size pixels that chainercv's ``scale`` then
    ``center_crop`` would take: (x0, y0, x1, y1)."""
    if (height <= width and height == scale_size) or (width <= height and width == scale_size):
        scaled_h, scaled_w = height, width
    elif height < width:
        scaled_h, scaled_w = scale_size, int(scale_size * width / height)
    else:
        scaled_h, scaled_w = int(scale_size * height / width), scale_size
    y0 = int(round((scaled_h - crop_size) / 2.))
    x0 = int(round((scaled_w - crop_size) / 2.))
    sy, sx = height / scaled_h, width / scaled_w
    return (x0 * sx, y0 * sy, (x0 + crop_size) * sx, (y0 + crop_size) * sy)


def val_image(path, scale_size, crop_size):
    """``(3, crop_size, crop_size)`` uint8: shorter side scaled to ``scale_size``, center
    crop; as chainercv's ``scale`` and ``center_crop``."""
    with Image.open(path) as image:
        width, height = image.size
        box = val_geometry(height, width, scale_size, crop_size)
        if image.mode != 'RGB':
            image = image.convert('RGB')
        out = image.resize((crop_size, crop_size), Image.BILINEAR, box=box)
    return _to_chw(out)


def decode_full(path):
    """The whole image decoded to RGB uint8 HWC: the floor any full-size reader pays (one
    decode and the one copy into an array; a conversion only for non-RGB files)."""
    with Image.open(path) as image:
        rgb = image if image.mode == 'RGB' else image.convert('RGB')
        return numpy.asarray(rgb)
