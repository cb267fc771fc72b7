"""The converter: a batch of the transforms' uint8 images to the model's input, on its
device."""
import chainer
import numpy


class InputConverter:
    """Batches of ``(uint8 CHW image, label)`` to the model's input, on its device.

    The images travel as uint8 (a quarter of float32's bytes, from the loader processes
    and to the GPU); there they become chainer's compute dtype (float16 under mixed16)
    with the model's per-channel ``mean`` subtracted, one batched pass. A converter for
    chainer's updater and evaluator (``converter(batch, device)``).
    """

    def __init__(self, mean):
        self.mean = numpy.asarray(mean, numpy.float32)

    def __call__(self, batch, device=None):
        x, t = chainer.dataset.concat_examples(batch, device)
        images = x.astype(numpy.float32)
        images -= chainer.backend.get_device_from_array(x).send(self.mean)  # 12 bytes
        dtype = chainer.get_dtype()
        return (images if dtype == numpy.float32 else images.astype(dtype)), t
