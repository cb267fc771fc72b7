"""The tutorial's TrainTransform and ValTransform, built from chainercv's transforms.

An example is ``(image, label)``. When the image is a decoded CHW array, chainercv's
transforms do the work. When it is a file path, the file is read by ``images`` (the one
reader of the product, as a viewer shows it) and ``fastimage`` decodes only what the crop
needs, on uint8, with chainercv's crop sampling and the same output: the fast path the
product's datasets use (``sop.load_split``). A thumbnail smaller than
``fastimage.MIN_SIDE`` is enlarged and takes the array path. Either way the result is a
(3, crop, crop) uint8 image: the mean is subtracted later, per batch and on the device,
by ``runtime.InputConverter``. A file that cannot be read raises
``images.UnreadableImage`` naming it.
"""
import random

from chainercv import transforms
import numpy

from distributed.data import fastimage, images


def to_uint8(img):
    """A float image from chainercv's transforms, rounded to uint8 like the fast path's."""
    return numpy.clip(numpy.rint(img), 0, 255).astype(numpy.uint8)


def draws(key=None):
    """The ``numpy.random.Generator`` an image's augmentation draws from: from ``key``
    (``(train.seed, epoch, position in the epoch)``, ``stream.StreamExamples``) when
    given, so any process draws the same; else seeded from Python's ``random``, which
    CPython reseeds in every forked process (loader workers then differ)."""
    if key is None:
        key = (random.getrandbits(64),)
    return numpy.random.default_rng([int(k) for k in key])


class TrainTransform:
    """Random-sized crop (Szegedy et al. 2015), resize, horizontal flip.

    An example is ``(image, label)`` or ``(image, label, key)``; the crop and flip draw
    from ``draws(key)``.
    """

    def __init__(self, crop_size):
        self.crop_size = crop_size

    def __call__(self, in_data):
        img, label = in_data[:2]
        rng = draws(in_data[2] if len(in_data) > 2 else None)
        if isinstance(img, str):
            picture = images.open_image(img)
            if min(picture.height, picture.width) >= fastimage.MIN_SIDE:
                return fastimage.train_image(picture, self.crop_size, rng), label
            img = fastimage.enlarged(picture)
        x0, y0, x1, y1 = fastimage.train_box(img.shape[1], img.shape[2], rng)
        img = transforms.resize(img[:, y0:y1, x0:x1], (self.crop_size, self.crop_size))
        if rng.uniform() < 0.5:
            img = img[:, :, ::-1]
        return to_uint8(img), label


class ValTransform:
    """Scale the shorter side, take the center crop: deterministic."""

    def __init__(self, crop_size, scale_size):
        self.crop_size = crop_size
        self.scale_size = scale_size

    def __call__(self, in_data):
        img, label = in_data
        if isinstance(img, str):
            picture = images.open_image(img)
            return fastimage.val_image(picture, self.scale_size, self.crop_size), label
        img = transforms.scale(img, self.scale_size)
        img = transforms.center_crop(img, (self.crop_size, self.crop_size))
        return to_uint8(img), label
