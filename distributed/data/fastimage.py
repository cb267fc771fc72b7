"""Decode-and-augment from an opened image file: crop first, decode small, resize on uint8.

chainercv's default path decodes the whole JPEG into float32, crops, resizes every channel
in float and then subtracts the mean: three full-size float passes for a 224 px result.
Here the crop geometry is drawn first (by chainercv itself, from the picture's header size,
so the distribution and the random-number use are chainercv's); ``images`` then decodes
the JPEG with simplejpeg at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the
crop at full resolution, crops, resizes the box to the output in one uint8
``cv2.resize`` (bilinear), and only the final crop is flipped. The result stays uint8: the
float conversion and the mean subtraction happen once per batch, on the device
(``runtime.InputConverter``), and a batch crosses from loader processes and to the GPU
in a quarter of float32's bytes.
"""
import cv2
import numpy
from chainercv import transforms

SCALE_RATIO_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
MIN_SIDE = 16
"""Pictures with a shorter side below this (pixels) are enlarged to it first
(``enlarged``): random_sized_crop keeps as little as 8% of the area, and of a thumbnail
that can be an empty crop."""


def to_chw(pixels, x_flip=False):
    """(H, W, 3) uint8 ``pixels`` as a contiguous (3, H, W) uint8 array, mirrored if
    ``x_flip``."""
    if x_flip:
        pixels = cv2.flip(pixels, 1)
    # OpenCV's channel split and one stack copy faster than NumPy's strided transpose.
    return numpy.stack(cv2.split(pixels))


def train_box(height, width):
    """A random-sized crop box (x0, y0, x1, y1) of a ``height`` x ``width`` picture, drawn
    by chainercv's ``random_sized_crop`` (scale 0.08-1, aspect 3/4-4/3) from ``random``."""
    # chainercv draws the crop from the shape alone; an empty array of that shape gives
    # its exact sampling without decoding anything.
    _, param = transforms.random_sized_crop(
        numpy.empty((0, height, width), numpy.uint8), SCALE_RATIO_RANGE, ASPECT_RATIO_RANGE,
        return_param=True)
    ys, xs = param['y_slice'], param['x_slice']
    return xs.start, ys.start, xs.stop, ys.stop


def train_image(picture, crop_size):
    """``(3, crop_size, crop_size)`` uint8 of an ``images.Picture``: random-sized crop,
    resize, random horizontal flip; as chainercv's transforms draw them.
    Raises ``images.UnreadableImage``."""
    box = train_box(picture.height, picture.width)
    out = picture.region(box, (crop_size, crop_size))
    _, flip = transforms.random_flip(numpy.empty((0, 1, 1)), x_random=True, return_param=True)
    return to_chw(out, flip['x_flip'])


def scaled_size(height, width, scale_size):
    """(height, width) after chainercv's ``scale(img, scale_size)`` (shorter side)."""
    if (height <= width and height == scale_size) or (width <= height and width == scale_size):
        return height, width
    if height < width:
        return scale_size, int(scale_size * width / height)
    return int(scale_size * height / width), scale_size


def val_image(picture, scale_size, crop_size):
    """``(3, crop_size, crop_size)`` uint8 of an ``images.Picture``: shorter side scaled to
    ``scale_size``, center crop; as chainercv's ``scale`` and ``center_crop``.
    Raises ``images.UnreadableImage``."""
    height, width = scaled_size(picture.height, picture.width, scale_size)
    scaled = picture.region(None, (height, width))
    y0 = int(round((height - crop_size) / 2.))
    x0 = int(round((width - crop_size) / 2.))
    return to_chw(scaled[y0:y0 + crop_size, x0:x0 + crop_size])


def enlarged(picture):
    """The whole picture as float32 (3, H, W), its shorter side enlarged to ``MIN_SIDE``
    if shorter: for chainercv's transforms on arrays. Raises ``images.UnreadableImage``."""
    height, width = scaled_size(picture.height, picture.width, MIN_SIDE)
    if min(picture.height, picture.width) >= MIN_SIDE:
        height, width = picture.height, picture.width
    return picture.region(None, (height, width)).transpose(2, 0, 1).astype(numpy.float32)
