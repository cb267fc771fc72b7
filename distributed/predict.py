"""Classify image files with a trained model: the top-k super-classes and their probabilities.

Each image is decoded and transformed as ``launch.evaluate`` and training's evaluation do it
(``ValTransform`` on the file, read by ``data.images`` as a viewer shows it), so a
prediction here is what ``launch.evaluate`` counts. A file that is missing or does not
decode is answered with a message naming it; the other files are still classified.
"""
import dataclasses

import chainer
import numpy

from distributed.config import Config, ConfigError, build, validate
from distributed.data import sop
from distributed.data.images import UnreadableImage
from distributed.data.transforms import ValTransform
from distributed.evaluate import WeightsModelConfig, expand_shorthand
from distributed.weights import load_model
from distributed.model import mean_of
from distributed.data.converter import InputConverter
from distributed.runtime import select_device


@dataclasses.dataclass
class PredictConfig(Config):
    model: WeightsModelConfig = dataclasses.field(default_factory=WeightsModelConfig)
    """Network and its trained weights (model=PATH is short for model.path=PATH)."""
    top_k: int = 5
    """How many of the most probable super-classes to show per image: 1 to 12."""


@dataclasses.dataclass
class Prediction:
    path: str
    """The image file as given."""
    top: list
    """[(super_class_id, name, probability)], most probable first; empty on error."""
    error: str = ''
    """Why the file could not be classified ('' when it was)."""


def load_predict_config(path=None, overrides=()):
    """The validated ``PredictConfig`` (the training keys are read and checked too)."""
    config = validate(build(PredictConfig, path, expand_shorthand(overrides)))
    if not 1 <= config.top_k <= len(sop.SUPER_CLASS_NAMES):
        raise ConfigError('top_k must be within 1..{}, not {}'.format(
            len(sop.SUPER_CLASS_NAMES), config.top_k))
    return config


class Predictor:
    """The loaded model on its device with the evaluation transform."""

    def __init__(self, config):
        self.device = select_device(config.device, 0, 1)
        self.model = load_model(config)
        self.model.to_device(self.device)
        self.transform = ValTransform(config.data.crop_size, config.data.scale_size)
        self.converter = InputConverter(mean_of(self.model))
        self.top_k = config.top_k

    def probabilities(self, path):
        """Softmax over the super-classes for the image file ``path``."""
        x, _ = self.converter([self.transform((path, 0))], self.device)
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            y = chainer.functions.softmax(self.model.predictor(x))
        return chainer.backend.CpuDevice().send(y.array)[0].astype(numpy.float64)

    def __call__(self, path):
        try:
            p = self.probabilities(path)
        except UnreadableImage as e:
            return Prediction(path, [], f'cannot read {path} as an image ({e.reason})')
        order = numpy.argsort(-p, kind='stable')[:self.top_k]
        return Prediction(path, [(int(i), sop.SUPER_CLASS_NAMES[i], float(p[i]))
                                 for i in order])


def format_prediction(prediction):
    if prediction.error:
        return f'error: {prediction.error}'
    return '\n'.join([prediction.path] + [f'  {i:>2}:{name:<14}{p:7.1%}'
                                          for i, name, p in prediction.top])
