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
from chainercv import transforms
import numpy

from distributed.data import fastimage, images


def to_uint8(img):
    """A float image from chainercv's transforms, rounded to uint8 like the fast path's."""
    return numpy.clip(numpy.rint(img), 0, 255).astype(numpy.uint8)


class TrainTransform:
    """Random-sized crop (Szegedy et al. 2015), resize, horizontal flip.

    The crop and flip draw from Python's ``random``, as chainercv's do; CPython reseeds it
    in every forked process, so MultiprocessIterator workers (forkserver children) draw
    independent crops.
    """

    def __init__(self, crop_size):
        self.crop_size = crop_size

    def __call__(self, in_data):
        img, label = in_data
        if isinstance(img, str):
            picture = images.open_image(img)
            if min(picture.height, picture.width) >= fastimage.MIN_SIDE:
                return fastimage.train_image(picture, self.crop_size), label
            img = fastimage.enlarged(picture)
        img = transforms.random_sized_crop(img)
        img = transforms.resize(img, (self.crop_size, self.crop_size))
        img = transforms.random_flip(img, x_random=True)
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
