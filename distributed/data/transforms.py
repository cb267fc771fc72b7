"""The tutorial's TrainTransform and ValTransform, built from chainercv's transforms."""
from chainercv import transforms


class TrainTransform:
    """Random-sized crop (Szegedy et al. 2015), resize, horizontal flip, mean subtraction."""

    def __init__(self, mean, crop_size):
        self.mean = mean
        self.crop_size = crop_size

    def __call__(self, in_data):
        img, label = in_data
        img = transforms.random_sized_crop(img)
        img = transforms.resize(img, (self.crop_size, self.crop_size))
        img = transforms.random_flip(img, x_random=True)
        img -= self.mean
        return img, label


class ValTransform:
    """Scale the shorter side, take the center crop, subtract the mean: deterministic."""

    def __init__(self, mean, crop_size, scale_size):
        self.mean = mean
        self.crop_size = crop_size
        self.scale_size = scale_size

    def __call__(self, in_data):
        img, label = in_data
        img = transforms.scale(img, self.scale_size)
        img = transforms.center_crop(img, (self.crop_size, self.crop_size))
        img -= self.mean
        return img, label
