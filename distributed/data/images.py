"""The product's one image reader: a file as an image viewer shows it, as RGB uint8.

Training, evaluation, ``launch.predict``, ``launch.view_samples`` and the benchmark read
image files through ``open_image`` (a ``Picture``, decoded region by region) or
``read_rgb`` (the whole picture, an (H, W, 3) uint8 array). What a person sees in a viewer
is what the network gets: the formats of ``FORMATS`` only (any other is refused before
anything runs), the EXIF orientation applied, the first frame, any bit depth or colour mode
to 8-bit sRGB (ICC profiles applied), transparency over white, pictures larger than
Pillow's ``Image.MAX_IMAGE_PIXELS`` refused undecoded: docs/running.md ("The data") says
each case. JPEGs in RGB or grayscale are decoded by simplejpeg (at 1/2, 1/4 or 1/8 scale
where the region keeps the output's pixels), everything else by Pillow; resizing is one
bilinear ``cv2.resize`` of the region. A file that cannot be read raises
``UnreadableImage`` naming it and saying why.
"""
import io
import math
import warnings

import cv2
import numpy
import simplejpeg
from PIL import Image, ImageCms, ImageOps

# Loader worker processes and ranks are the parallelism; an OpenCV thread pool in each
# would only compete with them for the same cores.
cv2.setNumThreads(1)

RASTER_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'TIFF', 'WEBP', 'PPM', 'AVIF')
Image.init()
# Only those this Pillow has: Image.open raises KeyError for a format it does not know.
FORMATS = tuple(f for f in RASTER_FORMATS if f in Image.OPEN)

EXIF_ORIENTATION = 0x0112
_SIMPLEJPEG_MODES = {'RGB': 'RGB', 'L': 'GRAY'}
_HIGH_DEPTH = {'I;16': 65535.0, 'I;16L': 65535.0, 'I;16B': 65535.0, 'I;16N': 65535.0,
               'I': 65535.0, 'F': 1.0}
_WHITE = (255, 255, 255)


class UnreadableImage(Exception):
    """A file that cannot be read as an image: ``path``, and ``reason`` in words."""

    def __init__(self, path, reason):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self):
        return 'cannot read {} as an image ({})'.format(self.path, self.reason)


def open_image(path):
    """The image file at ``path``, its header read and nothing decoded yet: a ``Picture``.

    Raises ``UnreadableImage`` for a missing file, a format outside ``FORMATS`` (EPS,
    PDF, text...) and a picture larger than ``Image.MAX_IMAGE_PIXELS``.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise UnreadableImage(path, e.strerror or type(e).__name__)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are refused alike.
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UnreadableImage(path, 'more than {:,} pixels, Pillow\'s limit against '
                              'decompression bombs; scale it down'.format(
                                  Image.MAX_IMAGE_PIXELS))
    except Image.UnidentifiedImageError:
        raise UnreadableImage(path, 'not an image in a format the product reads ({}): an '
                              'empty, truncated or other kind of file'.format(
                                  ', '.join(FORMATS)))
    except Exception as e:
        raise UnreadableImage(path, _reason(e))
    return Picture(path, data, image)


def read_rgb(path):
    """The whole picture at ``path``: (height, width, 3) uint8 RGB, as a viewer shows it.
    Raises ``UnreadableImage``."""
    return open_image(path).region()


class Picture:
    """An opened image file. ``height`` and ``width`` are those of the upright picture
    (EXIF orientation applied), in pixels; ``region`` decodes."""

    def __init__(self, path, data, image):
        self.path = path
        self._data = data
        self._image = image
        try:
            self._orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:
            self._orientation = 1  # an unreadable EXIF block: shown as stored, as viewers do
        if self._orientation not in _ORIENT:
            self._orientation = 1
        width, height = image.size
        if self._orientation >= 5:
            width, height = height, width
        self.height, self.width = height, width

    def region(self, box=None, size=None):
        """``box`` (x0, y0, x1, y1 in upright full-size pixels; None: the whole picture)
        resized to ``size`` (height, width; None: not resized), as a (height, width, 3)
        uint8 RGB array. Raises ``UnreadableImage`` when the pixels do not decode."""
        if box is None:
            box = (0, 0, self.width, self.height)
        out = (max(1, round(box[3] - box[1])), max(1, round(box[2] - box[0])))
        out = size or out
        try:
            if self._image.format in ('JPEG', 'MPO') and self._image.mode in _SIMPLEJPEG_MODES:
                try:
                    return self._rgb(self._region_simplejpeg(box, out))
                except ValueError:
                    pass  # simplejpeg refuses this JPEG (12-bit, damaged...): Pillow may not
            image = self._image
            if self._orientation != 1:
                image = ImageOps.exif_transpose(image)
            pixels = _to_8bit_rgb(image, self._image.info, _sample_type(self._image))
            return self._rgb(_crop_resize(numpy.asarray(pixels), box, 1, out))
        except UnreadableImage:
            raise
        except Exception as e:
            raise UnreadableImage(self.path, _reason(e))

    def _region_simplejpeg(self, box, out):
        factor = 1
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        # Powers of two only: libjpeg-turbo's other DCT scales (7/8, 3/4...) decode slower
        # than the full size. The region keeps at least the output's pixels per side.
        while factor < 8 and box_w / (2 * factor) >= out[1] and box_h / (2 * factor) >= out[0]:
            factor *= 2
        stored_w, stored_h = self._image.size
        pixels = simplejpeg.decode_jpeg(
            self._data, colorspace=_SIMPLEJPEG_MODES[self._image.mode],
            min_height=math.ceil(stored_h / factor), min_width=math.ceil(stored_w / factor))
        if pixels.shape[:2] != (math.ceil(stored_h / factor), math.ceil(stored_w / factor)):
            raise ValueError('unexpected DCT scale')
        # Scaled sizes are rounded up: the box scales by 1/factor, not by the size ratio.
        return _crop_resize(_ORIENT[self._orientation](pixels), box, factor, out)

    def _rgb(self, pixels):
        if pixels.ndim == 2 or pixels.shape[2] == 1:
            return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
        transform = _srgb_transform(self._image.info.get('icc_profile'), 'RGB')
        if transform is None:
            return pixels
        return numpy.asarray(ImageCms.applyTransform(Image.fromarray(pixels), transform))


def _reason(e):
    return '{}: {}'.format(type(e).__name__, e) if str(e) else type(e).__name__


# EXIF orientation -> the view of a stored (height, width[, channels]) array that shows it
# upright: the same operations as Pillow's ImageOps.exif_transpose (tested against it).
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


def _crop_resize(pixels, box, factor, out):
    """The ``box`` (full-size pixels) of ``pixels`` (decoded at 1/``factor``), resized to
    ``out`` (height, width) with one bilinear ``cv2.resize``."""
    height, width = pixels.shape[:2]
    x0 = min(max(int(round(box[0] / factor)), 0), width - 1)
    y0 = min(max(int(round(box[1] / factor)), 0), height - 1)
    x1 = min(max(int(round(box[2] / factor)), x0 + 1), width)
    y1 = min(max(int(round(box[3] / factor)), y0 + 1), height)
    crop = pixels[y0:y1, x0:x1]
    if crop.shape[:2] == tuple(out):
        return numpy.ascontiguousarray(crop)
    # A mirrored or rotated view (EXIF orientation) is copied by OpenCV as it needs.
    return cv2.resize(crop, (out[1], out[0]), interpolation=cv2.INTER_LINEAR)


def _sample_type(image):
    """(bits, signed) of a TIFF's grey samples as its tags state them, or None (another
    format, or tags that do not say one number for the one channel)."""
    tags = getattr(image, 'tag_v2', None)
    if image.format != 'TIFF' or tags is None:
        return None
    bits, sample_format = tags.get(258, (1,)), tags.get(339, (1,))  # TIFF's defaults
    bits = bits if isinstance(bits, tuple) else (bits,)
    sample_format = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    if len(bits) != 1 or sample_format[0] not in (1, 2):
        return None
    return int(bits[0]), sample_format[0] == 2


def _to_8bit_rgb(image, info, sample_type=None):
    """A Pillow image of any mode as an 'RGB' or 'L' image of what a viewer shows;
    ``sample_type`` (``_sample_type``) sets white for a picture of mode 'I'."""
    icc = info.get('icc_profile')
    if image.mode in _HIGH_DEPTH:
        values = numpy.asarray(image)
        white = _HIGH_DEPTH[image.mode]
        if image.mode == 'I' and sample_type:
            bits, signed = sample_type
            white = 2.0 ** (bits - 1 if signed else bits) - 1
            if bits == 32 and not signed:
                values = values.view(numpy.uint32)  # Pillow's 'I' holds them as int32
        values = values.astype(numpy.float64) * (255.0 / white)
        return Image.fromarray(numpy.clip(numpy.rint(values), 0, 255).astype(numpy.uint8))
    if image.mode == '1':
        return image.convert('L')
    if image.mode == 'CMYK':
        transform = _srgb_transform(icc, 'CMYK')
        return ImageCms.applyTransform(image, transform) if transform else image.convert('RGB')
    if image.mode == 'LAB':
        lab = ImageCms.createProfile('LAB')
        return ImageCms.profileToProfile(image, lab, ImageCms.createProfile('sRGB'),
                                         outputMode='RGB')
    if 'A' in image.getbands() or 'a' in image.getbands() or 'transparency' in info:
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, _WHITE + (255,))
        flat = Image.alpha_composite(background, rgba).convert('RGB')
        return flat.convert('L') if image.mode in ('LA', 'La', 'L') else flat
    if image.mode in ('L', 'RGB'):
        return image
    return image.convert('RGB')


_SRGB = ImageCms.createProfile('sRGB')
_TRANSFORMS = {}
_PROBE = Image.fromarray(numpy.stack(numpy.meshgrid(
    *[numpy.arange(0, 256, 51, dtype=numpy.uint8)] * 3), -1).reshape(36, 6, 3))


def _srgb_transform(icc, mode):
    """A LittleCMS transform from the ``icc`` profile's ``mode`` pixels to sRGB; None when
    there is no profile, the profile is unusable, or it is sRGB in effect (checked once per
    profile on a grid of colours)."""
    if not icc:
        return None
    key = (bytes(icc), mode)
    if key not in _TRANSFORMS:
        if len(_TRANSFORMS) >= 64:
            _TRANSFORMS.clear()
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(key[0]))
            transform = ImageCms.buildTransform(source, _SRGB, mode, 'RGB')
            if mode == 'RGB':
                shown = numpy.asarray(ImageCms.applyTransform(_PROBE, transform), numpy.int16)
                if numpy.abs(shown - numpy.asarray(_PROBE, numpy.int16)).max() <= 1:
                    transform = None
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            transform = None
        _TRANSFORMS[key] = transform
    return _TRANSFORMS[key]
