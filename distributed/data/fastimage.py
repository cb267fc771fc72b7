"""Decode-and-augment from an opened image file: crop first, decode small, resize on uint8.

chainercv's default path decodes the whole JPEG into float32, crops, resizes every channel
in float and then subtracts the mean: three full-size float passes for a 224 px result.
Here the crop geometry is drawn first (chainercv's sampling recipe, from the picture's
header size, from the generator the caller gives); ``images`` then decodes
the JPEG with simplejpeg at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the
crop at full resolution, crops, resizes the box to the output in one uint8
``cv2.resize`` (bilinear), and only the final crop is flipped. The result stays uint8: the
float conversion and the mean subtraction happen once per batch, on the device
(``runtime.InputConverter``), and a batch crosses from loader processes and to the GPU
in a quarter of float32's bytes.
"""
import math

import cv2
import numpy

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


def train_box(height, width, rng):
    """A random-sized crop box (x0, y0, x1, y1) of a ``height`` x ``width`` picture, drawn
    from ``rng`` (a ``numpy.random.Generator``) by Szegedy et al. 2015's recipe as
    chainercv's ``random_sized_crop`` applies it: up to 10 tries of an aspect ratio in
    3/4-4/3 (or its inverse, with probability 1/2) and an area fraction in 0.08-1 that
    fits; else the largest fraction that fits."""
    low, high = SCALE_RATIO_RANGE
    for _ in range(10):
        aspect = rng.uniform(*ASPECT_RATIO_RANGE)
        if rng.uniform() < 0.5:
            aspect = 1 / aspect
        fits = min(high, height / (width * aspect), aspect * width / height)
        scale = rng.uniform(low, high)
        if scale <= fits:
            break
    else:
        scale = rng.uniform(min(low, fits), fits)
    crop_h = int(math.floor(math.sqrt(scale * height * width * aspect)))
    crop_w = int(math.floor(math.sqrt(scale * height * width / aspect)))
    y0 = int(rng.integers(0, height - crop_h, endpoint=True))
    x0 = int(rng.integers(0, width - crop_w, endpoint=True))
    return x0, y0, x0 + crop_w, y0 + crop_h


def train_image(picture, crop_size, rng):
    """``(3, crop_size, crop_size)`` uint8 of an ``images.Picture``: random-sized crop
    (``train_box``), resize, horizontal flip with probability 1/2, all drawn from ``rng``.
    Raises ``images.UnreadableImage``."""
    box = train_box(picture.height, picture.width, rng)
    out = picture.region(box, (crop_size, crop_size))
    return to_chw(out, rng.uniform() < 0.5)


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
