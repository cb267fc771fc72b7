"""Every kind of image file is read as an image viewer shows it, by one reader.

Each test makes its own file. The reference for "what a viewer shows" is stated per test:
an exact value where the file's meaning is plain (a 16-bit grey level, a transparent pixel
over white), or Pillow's own decoding with ``ImageOps.exif_transpose`` where Pillow is the
viewer (orientation).
"""
import io
import os
import random
import re
import struct
import subprocess
import sys
import zlib

import cv2
import numpy
import pytest
from PIL import Image, ImageCms, ImageOps

from distributed.data import images
from distributed.data.images import UnreadableImage
from distributed.data.transforms import TrainTransform, ValTransform

from launching import REPO

S = 32


def shown(path):
    """The evaluation reader's (S, S, 3) uint8 view of an S x S picture: the whole of it,
    not resized (the shorter side is the scale size, the crop is all of it)."""
    img, label = ValTransform(S, S)((str(path), 7))
    assert img.shape == (3, S, S) and img.dtype == numpy.uint8 and label == 7
    return img.transpose(1, 2, 0).astype(int)


def ramp(dtype, top):
    """An S x S grey ramp from 0 to ``top``, left to right."""
    return numpy.tile(numpy.linspace(0, top, S), (S, 1)).astype(dtype)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / 'deep.JPG'
    Image.fromarray(ramp(numpy.uint16, 65535)).save(path, 'PNG')
    with Image.open(path) as image:
        assert image.mode == 'I;16'
    expected = numpy.rint(ramp(numpy.float64, 255.0))
    got = shown(path)
    assert numpy.abs(got - expected[..., None]).max() <= 1
    assert (got[:, S // 2] < 200).all()  # clipped, the right half would be white


def tiff_with_sample_format(image, sample_format):
    """TIFF bytes of ``image`` whose SampleFormat tag (339) says ``sample_format``: Pillow
    writes 'I' as signed and 'I;16' as unsigned (the tag only when asked), and has no
    writer for the others."""
    data = io.BytesIO()
    image.save(data, 'TIFF', tiffinfo={339: 1})
    data = data.getvalue()
    entries = [struct.pack('<HHII', 339, 3, 1, value) for value in (1, 2)]
    assert sum(data.count(entry) for entry in entries) == 1
    return b''.join(data.replace(entry, struct.pack('<HHII', 339, 3, 1, sample_format))
                    for entry in entries if entry in data)


@pytest.mark.parametrize('kind,values,sample_format', [
    ('signed 32-bit', ramp(numpy.int64, 2 ** 31 - 1).astype(numpy.int32), 2),
    ('unsigned 32-bit', ramp(numpy.int64, 2 ** 32 - 1).astype(numpy.uint32).view(numpy.int32),
     1),
    ('signed 16-bit', ramp(numpy.int32, 32767).astype(numpy.uint16), 2),
])
def test_integer_tiffs_are_scaled_from_the_range_of_their_sample_type(
        tmp_path, kind, values, sample_format):
    # Pillow opens each as mode 'I', as it does a 16-bit PGM: the TIFF's tags tell white.
    path = tmp_path / 'deep.tif'
    path.write_bytes(tiff_with_sample_format(Image.fromarray(values), sample_format))
    with Image.open(path) as image:
        assert image.mode == 'I' and image.tag_v2[339] == (sample_format,)
    expected = numpy.rint(ramp(numpy.float64, 255.0))[..., None]
    assert numpy.abs(shown(path) - expected).max() <= 1, kind


def test_a_32bit_tiff_holding_16bit_values_is_dark_and_negative_values_black(tmp_path):
    # White is the top of the stored type, as for 16-bit files holding 8-bit values.
    path = tmp_path / 'deep.tif'
    values = ramp(numpy.int32, 65535)
    values[:, :S // 2] = -5
    Image.fromarray(values).save(path, 'TIFF')
    assert shown(path).max() <= 1


def test_16bit_pgm_read_as_mode_i_is_scaled_from_65535(tmp_path):
    # Pillow reads 16-bit PGMs (and older Pillow 16-bit PNGs) as 'I' too: not 32 bits.
    path = tmp_path / 'deep.pgm'
    values = ramp(numpy.uint16, 65535)
    path.write_bytes(b'P5 %d %d 65535\n' % (S, S) + values.astype('>u2').tobytes())
    with Image.open(path) as image:
        assert image.mode == 'I'
    assert numpy.abs(shown(path) - numpy.rint(ramp(numpy.float64, 255.0))[..., None]).max() <= 1


def test_float_tiffs_are_scaled_from_0_to_1(tmp_path):
    path = tmp_path / 'deep.tif'
    image = Image.fromarray(ramp(numpy.float32, 1.0))
    assert image.mode == 'F'
    image.save(path, 'TIFF')
    assert numpy.abs(shown(path) - numpy.rint(ramp(numpy.float64, 255.0))[..., None]).max() <= 1


def test_16bit_rgb_png_keeps_its_high_byte(tmp_path):
    path = str(tmp_path / 'deep_rgb.png')
    rgb = numpy.zeros((S, S, 3), numpy.uint16)
    rgb[..., 0] = ramp(numpy.uint16, 65535)
    rgb[..., 2] = 40000
    assert cv2.imwrite(path, rgb[..., ::-1])  # OpenCV writes BGR, 16 bits per channel
    got = shown(path)
    assert numpy.abs(got[..., 0] - numpy.rint(ramp(numpy.float64, 255.0))).max() <= 1
    assert (got[..., 1] == 0).all() and numpy.abs(got[..., 2] - 40000 / 257).max() <= 1


def half_transparent_red():
    """RGBA: left half opaque red, right half fully transparent black."""
    rgba = numpy.zeros((S, S, 4), numpy.uint8)
    rgba[:, :S // 2] = (255, 0, 0, 255)
    return Image.fromarray(rgba)


ALPHA_FILES = {
    'rgba_png': lambda: (half_transparent_red(), 'PNG', {}),
    'rgba_webp': lambda: (half_transparent_red(), 'WEBP', {'lossless': True}),
    'la_png': lambda: (half_transparent_red().convert('LA'), 'PNG', {}),
    'palette_png': lambda: (half_transparent_red().convert('P'), 'PNG', {}),
    'palette_gif': lambda: (half_transparent_red().convert('P'), 'GIF', {}),
    'rgb_colour_key_png': lambda: (half_transparent_red().convert('RGB'), 'PNG',
                                   {'transparency': (0, 0, 0)}),
}


@pytest.mark.parametrize('kind', sorted(ALPHA_FILES))
def test_transparent_pixels_are_white_and_opaque_ones_kept(tmp_path, kind):
    image, fmt, options = ALPHA_FILES[kind]()
    if image.mode == 'P' and not options:
        # Pillow's RGBA -> P keeps no alpha: mark the palette entry of the transparent half.
        options = {'transparency': image.getpixel((S - 1, 0))}
    path = tmp_path / (kind + '.JPG')
    image.save(path, fmt, **options)
    got = shown(path)
    opaque = (255, 0, 0) if image.mode != 'LA' else (76, 76, 76)  # red's grey level
    assert numpy.abs(got[:, :S // 2 - 1] - opaque).max() <= 2, kind
    assert (got[:, S // 2 + 1:] >= 253).all(), kind


def test_semi_transparent_pixels_are_blended_over_white(tmp_path):
    path = tmp_path / 'glass.png'
    Image.new('RGBA', (S, S), (255, 0, 0, 128)).save(path)
    assert numpy.abs(shown(path) - (255, 127, 127)).max() <= 1


def test_palette_one_bit_and_ycbcr_lab_files(tmp_path):
    colours = numpy.zeros((S, S, 3), numpy.uint8)
    colours[:, :S // 2] = (10, 200, 30)
    colours[:, S // 2:] = (250, 240, 5)
    rgb = Image.fromarray(colours)
    rgb.convert('P', palette=Image.Palette.ADAPTIVE, colors=2).save(tmp_path / 'p.png')
    assert numpy.abs(shown(tmp_path / 'p.png') - colours).max() <= 1
    rgb.convert('1').save(tmp_path / 'bw.png')
    assert set(numpy.unique(shown(tmp_path / 'bw.png'))) <= {0, 255}
    rgb.convert('YCbCr').save(tmp_path / 'ycc.tif')
    assert numpy.abs(shown(tmp_path / 'ycc.tif') - colours).max() <= 3
    # 8-bit LAB rounds saturated colours off by more than a grey level: muted ones here.
    muted = (colours // 2 + 60).astype(numpy.uint8)
    ImageCms.profileToProfile(Image.fromarray(muted), ImageCms.createProfile('sRGB'),
                              ImageCms.createProfile('LAB'), outputMode='LAB').save(
                                  tmp_path / 'lab.tif')
    assert numpy.abs(shown(tmp_path / 'lab.tif') - muted).max() <= 5


def test_adobe_cmyk_jpeg_shows_its_colours(tmp_path):
    colours = numpy.zeros((S, S, 3), numpy.uint8)
    colours[:, :S // 2] = (200, 30, 30)
    colours[:, S // 2:] = (40, 60, 220)
    path = tmp_path / 'cmyk.JPG'
    Image.fromarray(colours).convert('CMYK').save(path, quality=95)
    assert b'Adobe' in path.read_bytes()  # Adobe's marker: the CMYK values are stored inverted
    assert numpy.abs(shown(path)[2:-2, 2:S // 2 - 2] - (200, 30, 30)).max() <= 8
    assert numpy.abs(shown(path)[2:-2, S // 2 + 2:-2] - (40, 60, 220)).max() <= 8


def test_the_first_frame_of_animations_and_multipage_files(tmp_path):
    red, blue = Image.new('RGB', (S, S), (255, 0, 0)), Image.new('RGB', (S, S), (0, 0, 255))
    for name in ('anim.gif', 'pages.tif', 'anim.webp', 'anim.png'):
        red.save(tmp_path / name, save_all=True, append_images=[blue], duration=100)
        assert numpy.abs(shown(tmp_path / name) - (255, 0, 0)).max() <= 2, name


def test_progressive_jpeg_equals_pillows_decoding(tmp_path):
    path = tmp_path / 'progressive.JPG'
    rng = numpy.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (S, S, 3)).astype(numpy.uint8)).save(
        path, quality=90, progressive=True)
    with Image.open(path) as image:
        assert image.info.get('progressive')
        reference = numpy.asarray(image.convert('RGB'), dtype=int)
    assert numpy.abs(shown(path) - reference).max() <= 1


def quadrants(height, width):
    """Four flat colours, one per quadrant: any rotation or mirror shows."""
    pixels = numpy.zeros((height, width, 3), numpy.uint8)
    pixels[:height // 2, :width // 2] = (230, 20, 20)
    pixels[:height // 2, width // 2:] = (20, 230, 20)
    pixels[height // 2:, :width // 2] = (20, 20, 230)
    pixels[height // 2:, width // 2:] = (230, 230, 20)
    return Image.fromarray(pixels)


def with_orientation(path, image, orientation, fmt):
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    image.save(path, fmt, exif=exif, quality=95)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation, fmt):
    path = tmp_path / 'camera.JPG'
    with_orientation(path, quadrants(48, 64), orientation, fmt)
    with Image.open(path) as image:
        upright = numpy.asarray(ImageOps.exif_transpose(image).convert('RGB'), dtype=int)
    assert upright.shape[:2] == ((64, 48) if orientation >= 5 else (48, 64))
    got = images.read_rgb(str(path)).astype(int)
    assert got.shape == upright.shape
    assert numpy.abs(got - upright).mean() < 1.0


def test_training_crops_of_a_rotated_photo_are_upright(tmp_path):
    # Stored as a left-to-right ramp with orientation 6 (rotate 90 degrees clockwise to
    # show): upright it brightens from top to bottom, and every crop must too, whatever
    # the horizontal flip. Read as stored, it would brighten from right to left.
    path = tmp_path / 'portrait.JPG'
    stored = numpy.tile(numpy.linspace(0, 255, 320), (240, 1)).astype(numpy.uint8)
    with_orientation(path, Image.fromarray(stored).convert('RGB'), 6, 'JPEG')
    transform = TrainTransform(32)
    random.seed(0)
    for _ in range(50):
        img = transform((str(path), 0))[0].astype(float)
        top, bottom = img[:, :16].mean(), img[:, 16:].mean()
        left, right = img[:, :, :16].mean(), img[:, :, 16:].mean()
        assert bottom - top > 5 and abs(left - right) < 3


def swapped_primaries_profile():
    """An RGB profile like sRGB but with red and blue swapped: a colour-managed viewer
    shows a pixel stored as pure red as pure blue. Made by swapping the red and blue
    colorant tags of LittleCMS's sRGB profile in its tag table."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes())
    count, = struct.unpack('>I', icc[128:132])
    entries = {bytes(icc[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entries[b'rXYZ'], entries[b'bXYZ']
    icc[red + 4:red + 12], icc[blue + 4:blue + 12] = icc[blue + 4:blue + 12], \
        icc[red + 4:red + 12]
    return bytes(icc)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_icc_profiles_are_converted_to_srgb(tmp_path, fmt):
    red = Image.new('RGB', (S, S), (255, 0, 0))
    path = tmp_path / 'profiled.JPG'
    red.save(path, fmt, icc_profile=swapped_primaries_profile(), quality=95)
    got = shown(path)
    assert got[..., 2].min() > 200 and got[..., 0].max() < 60, got[0, 0]
    # sRGB's own profile changes nothing.
    red.save(path, fmt, icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile('sRGB')).tobytes(), quality=95)
    assert numpy.abs(shown(path) - (255, 0, 0)).max() <= 3


POSTSCRIPT = (b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n'
              b'newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n')


def test_postscript_behind_a_jpg_name_is_refused_and_runs_nothing(tmp_path):
    # Pillow's EPS plugin hands the file to Ghostscript ('gs') when it is decoded. A 'gs'
    # first on PATH that records being run shows whether anything was handed over.
    path = tmp_path / 'photo.JPG'
    path.write_bytes(POSTSCRIPT)
    bin_dir, ran = tmp_path / 'bin', tmp_path / 'gs-ran'
    bin_dir.mkdir()
    (bin_dir / 'gs').write_text('#!/bin/sh\necho "$@" >> {}\nexit 1\n'.format(ran))
    (bin_dir / 'gs').chmod(0o755)
    code = ('import distributed\n'
            'from distributed.data.images import UnreadableImage\n'
            'from distributed.data.transforms import TrainTransform, ValTransform\n'
            'import sys\n'
            'for transform in (ValTransform(32, 32), TrainTransform(32)):\n'
            '    try:\n'
            '        transform((sys.argv[1], 0))\n'
            '        print("decoded")\n'
            '    except UnreadableImage as e:\n'
            '        print("refused:", e.reason)\n')
    env = dict(os.environ, PATH='{}:{}'.format(bin_dir, os.environ['PATH']), PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, '-c', code, str(path)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    assert not ran.exists(), 'gs was run: ' + ran.read_text()
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('refused: not an image in a format the product reads') == 2, \
        done.stdout + done.stderr


def png_chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def test_pictures_over_pillows_pixel_limit_are_refused_undecoded(tmp_path, monkeypatch):
    path = tmp_path / 'large.png'
    Image.new('L', (200, 100), 128).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 15000)  # 20,000 pixels: over it, not 2x
    with pytest.raises(UnreadableImage, match='large.png.*more than 15,000 pixels'):
        ValTransform(32, 32)((str(path), 0))
    monkeypatch.undo()
    # A real bomb: a PNG header claiming 40,000 x 40,000 pixels, refused from its header.
    bomb = tmp_path / 'bomb.JPG'
    bomb.write_bytes(b'\x89PNG\r\n\x1a\n' + png_chunk(
        b'IHDR', struct.pack('>IIBBBBB', 40000, 40000, 8, 0, 0, 0, 0)) + png_chunk(
        b'IDAT', zlib.compress(b'')) + png_chunk(b'IEND', b''))
    with pytest.raises(UnreadableImage, match='decompression bombs'):
        TrainTransform(32)((str(bomb), 0))


def test_unreadable_files_are_named_with_the_reason(tmp_path):
    (tmp_path / 'empty.JPG').write_bytes(b'')
    good = io.BytesIO()
    Image.new('RGB', (S, S)).save(good, 'JPEG')
    (tmp_path / 'cut.JPG').write_bytes(good.getvalue()[:200])
    for name in ('empty.JPG', 'cut.JPG', 'missing.JPG'):
        with pytest.raises(UnreadableImage) as caught:
            TrainTransform(S)((str(tmp_path / name), 0))
        assert caught.value.path == str(tmp_path / name) and caught.value.reason


READERS = re.compile(r'Image\.open\(|read_image\(|imread\(|imdecode\(|decode_jpeg\(')


def test_one_module_reads_image_files():
    # Every command reads pictures through data/images.py; the benchmark's baselines
    # (chainercv's path, bare decodes, Pillow's reference resize) are the one exception.
    allowed = {os.path.join('distributed', 'data', 'images.py'),
               os.path.join('distributed', 'bench', 'pipeline.py')}
    readers = []
    for folder in ('distributed', 'launch'):
        for base, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                path = os.path.relpath(os.path.join(base, name), REPO)
                if name.endswith('.py') and path not in allowed:
                    with open(os.path.join(REPO, path)) as f:
                        if READERS.search(f.read()):
                            readers.append(path)
    assert readers == []
