"""TrainTransform and ValTransform: an example's image as a (3, crop, crop) uint8 array.

An example is ``(image, label)``, or ``(image, label, key)`` for ``TrainTransform`` (the
key its crop and flip draw from, ``draws``). The image is a file path or a decoded
(3, H, W) array, and the result is the same recipe either way, as chainercv's tutorial
transforms define it (train: random-sized crop of Szegedy et al. 2015, resize,
horizontal flip; val: shorter side scaled, center crop):

- From a file path (the product's datasets give paths, ``sop.load_split``): the file is
  opened by ``images`` (the product's one reader) and only the region the crop needs is
  decoded and resized, on uint8 (``train_image``, ``val_image``).
- From a decoded float array (chainercv's ``read_image``): chainercv's transforms in
  float32, rounded to uint8 (``train_array``, ``val_array``). The reference the file path
  is held to (same crop box and flip for the same key), and the path of a training
  thumbnail whose shorter side is below ``MIN_SIDE``: it is enlarged to it first
  (``enlarged``), as a crop of 8% of its area could be empty.

The mean is subtracted later, per batch and on the device (``converter.InputConverter``).
A file that cannot be read raises ``images.UnreadableImage`` naming it.
"""
import math
import random

import cv2
from chainercv import transforms
import numpy

from distributed.data import images

SCALE_RATIO_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
MIN_SIDE = 16
"""A training picture with a shorter side below this (pixels) is enlarged to it first
(``enlarged``): random_sized_crop keeps as little as 8% of the area, and of a thumbnail
that can be an empty crop."""


def draws(key=None):
    """The ``numpy.random.Generator`` an image's augmentation draws from: from ``key``
    (``(train.seed, epoch, position in the epoch)``, ``datasets.StreamExamples``) when
    given, so any process draws the same; else seeded from Python's ``random``, which
    CPython reseeds in every forked process (loader workers then differ)."""
    if key is None:
        key = (random.getrandbits(64),)
    return numpy.random.default_rng([int(k) for k in key])


class TrainTransform:
    """Random-sized crop (``train_box``), resize to ``crop_size``, horizontal flip with
    probability 1/2, drawn from ``draws(key)``."""

    def __init__(self, crop_size):
        self.crop_size = crop_size

    def __call__(self, in_data):
        img, label = in_data[:2]
        rng = draws(in_data[2] if len(in_data) > 2 else None)
        if isinstance(img, str):
            picture = images.open_image(img)
            if min(picture.height, picture.width) >= MIN_SIDE:
                return train_image(picture, self.crop_size, rng), label
            img = enlarged(picture)
        return train_array(img, self.crop_size, rng), label


class ValTransform:
    """Scale the shorter side to ``scale_size``, take the center ``crop_size`` square:
    deterministic."""

    def __init__(self, crop_size, scale_size):
        self.crop_size = crop_size
        self.scale_size = scale_size

    def __call__(self, in_data):
        img, label = in_data
        if isinstance(img, str):
            picture = images.open_image(img)
            return val_image(picture, self.scale_size, self.crop_size), label
        return val_array(img, self.scale_size, self.crop_size), label


# The crop geometry, shared by both paths.

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


def scaled_size(height, width, scale_size):
    """(height, width) after chainercv's ``scale(img, scale_size)`` (shorter side)."""
    if (height <= width and height == scale_size) or (width <= height and width == scale_size):
        return height, width
    if height < width:
        return scale_size, int(scale_size * width / height)
    return int(scale_size * height / width), scale_size


# From an opened file: decode what the crop needs, resize on uint8.

def train_image(picture, crop_size, rng):
    """``(3, crop_size, crop_size)`` uint8 of an ``images.Picture``: random-sized crop
    (``train_box``), resize, horizontal flip with probability 1/2, all drawn from ``rng``.
    Raises ``images.UnreadableImage``."""
    box = train_box(picture.height, picture.width, rng)
    out = picture.region(box, (crop_size, crop_size))
    return to_chw(out, rng.uniform() < 0.5)


def val_image(picture, scale_size, crop_size):
    """``(3, crop_size, crop_size)`` uint8 of an ``images.Picture``: shorter side scaled to
    ``scale_size``, center crop; as chainercv's ``scale`` and ``center_crop``.
    Raises ``images.UnreadableImage``."""
    height, width = scaled_size(picture.height, picture.width, scale_size)
    scaled = picture.region(None, (height, width))
    y0 = int(round((height - crop_size) / 2.))
    x0 = int(round((width - crop_size) / 2.))
    return to_chw(scaled[y0:y0 + crop_size, x0:x0 + crop_size])


def to_chw(pixels, x_flip=False):
    """(H, W, 3) uint8 ``pixels`` as a contiguous (3, H, W) uint8 array, mirrored if
    ``x_flip``."""
    if x_flip:
        pixels = cv2.flip(pixels, 1)
    # OpenCV's channel split and one stack copy faster than NumPy's strided transpose.
    return numpy.stack(cv2.split(pixels))


# From a decoded (3, H, W) array: chainercv's transforms in float32.

def train_array(img, crop_size, rng):
    """``(3, crop_size, crop_size)`` uint8 of a (3, H, W) array: the crop box and flip of
    ``train_image`` drawn alike from ``rng``, cropped and resized by chainercv."""
    x0, y0, x1, y1 = train_box(img.shape[1], img.shape[2], rng)
    img = transforms.resize(img[:, y0:y1, x0:x1], (crop_size, crop_size))
    if rng.uniform() < 0.5:
        img = img[:, :, ::-1]
    return to_uint8(img)


def val_array(img, scale_size, crop_size):
    """``(3, crop_size, crop_size)`` uint8 of a (3, H, W) array: chainercv's ``scale`` and
    ``center_crop``."""
    img = transforms.scale(img, scale_size)
    img = transforms.center_crop(img, (crop_size, crop_size))
    return to_uint8(img)


def enlarged(picture):
    """The whole picture as float32 (3, H, W), its shorter side enlarged to ``MIN_SIDE``
    if shorter: for ``train_array``. Raises ``images.UnreadableImage``."""
    height, width = scaled_size(picture.height, picture.width, MIN_SIDE)
    if min(picture.height, picture.width) >= MIN_SIDE:
        height, width = picture.height, picture.width
    return picture.region(None, (height, width)).transpose(2, 0, 1).astype(numpy.float32)


def to_uint8(img):
    """A float image from chainercv's transforms, rounded to uint8 like the file path's."""
    return numpy.clip(numpy.rint(img), 0, 255).astype(numpy.uint8)
