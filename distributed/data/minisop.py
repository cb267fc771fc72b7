"""minisop: a small synthetic dataset in the exact Stanford Online Products layout.

The real SOP cannot be downloaded on the machines this project runs on, so the embedded
default is a generated tree that chainercv's ``OnlineProductsDataset`` reads unchanged.
Each super-class has its own hue and its own texture, both covering most of the picture,
so the label survives the small random crops and flips used in training; grayscale
pictures keep the texture. Products vary in hue, texture scale, colours, shape and
background, and the images of one product vary in size, framing and lighting.

Trees are written atomically (built next to the destination, then renamed) under a lock
file, so MPI ranks that share a machine can all call :func:`ensure_minisop` at once.
"""
import colorsys
import hashlib
import json
import os
import shutil
import tempfile

import filelock
import numpy as np
from PIL import Image

from distributed.data.sop import INDEX_FILES, INDEX_HEADER, SUPER_CLASS_NAMES

# Bump when the pictures or the layout change, so cached trees are regenerated.
GENERATOR_VERSION = 1

DEFAULTS = {
    'products_per_class': 16,
    'images_per_product': (2, 6),
    'size_range': (80, 200),
    'grayscale_fraction': 0.1,
    'seed': 0,
}

MARKER = '.minisop.json'
JPEG_QUALITY = 90

# Texture per super-class, in SOP order. Every one looks the same after a horizontal
# flip (up to a shift), so flipping never turns one class's texture into another's.
TEXTURES = (
    'hstripes', 'vstripes', 'checker', 'dots', 'rings', 'crosshatch',
    'grid', 'waves', 'diamonds', 'speckle', 'chevrons', 'smooth',
)


def _params(products_per_class, images_per_product, size_range, grayscale_fraction, seed):
    lo_n, hi_n = (int(v) for v in images_per_product)
    lo_s, hi_s = (int(v) for v in size_range)
    if int(products_per_class) < 2:
        raise ValueError(
            'minisop: products_per_class must be at least 2 (one train and one test '
            'product per super-class), got {}'.format(products_per_class))
    if not 1 <= lo_n <= hi_n:
        raise ValueError(
            'minisop: images_per_product must be (min, max) with 1 <= min <= max, '
            'got {}'.format(tuple(images_per_product)))
    if not 16 <= lo_s <= hi_s:
        raise ValueError(
            'minisop: size_range must be (min, max) side in pixels with 16 <= min <= max, '
            'got {}'.format(tuple(size_range)))
    if not 0.0 <= float(grayscale_fraction) <= 1.0:
        raise ValueError(
            'minisop: grayscale_fraction must be within [0, 1], got {}'.format(
                grayscale_fraction))
    return {
        'version': GENERATOR_VERSION,
        'products_per_class': int(products_per_class),
        'images_per_product': [lo_n, hi_n],
        'size_range': [lo_s, hi_s],
        'grayscale_fraction': float(grayscale_fraction),
        'seed': int(seed),
    }


def params_hash(params):
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode('ascii')).hexdigest()[:10]


def read_marker(root):
    """The parameters a minisop tree at ``root`` was made with, or None if it is not one."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _rgb(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _band(a, sharp=2.2):
    return np.clip(0.5 + 0.5 * sharp * np.cos(2 * np.pi * a), 0.0, 1.0)


def _lines(a, width, px):
    # px is one pixel in period units: a one-pixel ramp keeps the edges free of aliasing.
    d = np.abs(a - np.round(a))
    return np.clip((width - d) / px + 0.5, 0.0, 1.0)


def _smooth_noise(rng, h, w, cell):
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode='F').resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _texture(kind, rng, h, w, period, angle_jitter, center):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x = x + rng.uniform(0, period)
    y = y + rng.uniform(0, period)
    # A small tilt: products are never photographed perfectly square to the camera.
    c, s = np.cos(angle_jitter), np.sin(angle_jitter)
    u = (c * x + s * y) / period
    v = (-s * x + c * y) / period
    px = 1.0 / period
    if kind == 'hstripes':
        return _band(v)
    if kind == 'vstripes':
        return _band(u)
    if kind == 'checker':
        return np.clip(0.5 + 4.0 * np.cos(np.pi * u) * np.cos(np.pi * v), 0.0, 1.0)
    if kind == 'dots':
        d = np.hypot(u - np.round(u), v - np.round(v))
        return np.clip((0.3 - d) / px + 0.5, 0.0, 1.0)
    if kind == 'rings':
        r = np.hypot(np.arange(w)[None, :] - center[0], np.arange(h)[:, None] - center[1])
        return _band(r / period)
    if kind == 'crosshatch':
        k = 1.0 / np.sqrt(2.0)
        return np.maximum(_lines((u + v) * k, 0.14, px), _lines((u - v) * k, 0.14, px))
    if kind == 'grid':
        return np.maximum(_lines(u, 0.14, px), _lines(v, 0.14, px))
    if kind == 'waves':
        return _band(v + 0.35 * np.sin(np.pi * u))
    if kind == 'diamonds':
        return np.clip(
            0.5 + 4.0 * np.cos(np.pi * (u + v) / 1.4) * np.cos(np.pi * (u - v) / 1.4),
            0.0, 1.0)
    if kind == 'speckle':
        return np.clip((_smooth_noise(rng, h, w, period / 2.5) - 0.5) * 4.0 + 0.5, 0.0, 1.0)
    if kind == 'chevrons':
        return _band(v + 1.2 * np.abs(u / 1.5 - np.round(u / 1.5)))
    if kind == 'smooth':
        return _smooth_noise(rng, h, w, period * 4.0)
    raise ValueError('minisop: unknown texture {!r}'.format(kind))


def _product(rng, super_id):
    """What the images of one product share: its colours, texture scale and shape."""
    hue = super_id / 12.0 + rng.normal(0.0, 0.012)
    sat = rng.uniform(0.55, 0.9)
    val = rng.uniform(0.7, 0.95)
    return {
        'fg': _rgb(hue, sat, val),
        'fg_dark': _rgb(hue + rng.uniform(-0.03, 0.03), sat * rng.uniform(0.5, 0.9),
                        val * rng.uniform(0.3, 0.55)),
        'bg': _rgb(hue + rng.normal(0.0, 0.02), rng.uniform(0.05, 0.25),
                   rng.uniform(0.6, 0.98)),
        'bg_contrast': rng.uniform(0.2, 0.4),
        'period_frac': rng.uniform(0.055, 0.095),
        'tilt': rng.normal(0.0, 0.06),
        'superellipse': rng.choice([2, 3, 6]),
        'extent': rng.uniform(0.75, 0.92),
        'aspect': rng.uniform(0.8, 1.25),
    }


def _image(rng, super_id, prod, size_range, gray, noise):
    lo, hi = size_range
    w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    period = max(4.0, min(w, h) * prod['period_frac'] * rng.uniform(0.9, 1.1))
    cx = w * rng.uniform(0.4, 0.6)
    cy = h * rng.uniform(0.4, 0.6)
    t = _texture(TEXTURES[super_id], rng, h, w, period, prod['tilt'], (cx, cy))

    ext = prod['extent'] * rng.uniform(0.9, 1.05)
    ax = 0.5 * w * ext * min(1.0, prod['aspect'])
    ay = 0.5 * h * ext * min(1.0, 1.0 / prod['aspect'])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = int(prod['superellipse'])
    # Near the outline rad_p ~ 1 + p * (rad - 1): dividing by p gives a soft edge about
    # 1.5 px wide without the costly fractional power.
    rad_p = np.abs((xx - cx) / ax) ** p + np.abs((yy - cy) / ay) ** p
    inside = np.clip((1.0 - rad_p) * min(ax, ay) / (1.5 * p), 0.0, 1.0)[..., None]

    t3 = t[..., None]
    obj = prod['fg_dark'] + (prod['fg'] - prod['fg_dark']) * t3
    back = prod['bg'] * (1.0 - prod['bg_contrast'] * t3)
    img = back + (obj - back) * inside

    if rng.random() < 0.3:
        # An unrelated sticker or reflection, so that no single pixel is a sure signal.
        rw, rh = rng.uniform(0.1, 0.25) * w, rng.uniform(0.1, 0.25) * h
        x0, y0 = rng.uniform(0, w - rw), rng.uniform(0, h - rh)
        patch = (xx >= x0) & (xx < x0 + rw) & (yy >= y0) & (yy < y0 + rh)
        img[patch] = _rgb(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.3, 1.0))

    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xx / w - 0.5) + np.sin(theta) * (yy / h - 0.5))
    img = img * (rng.uniform(0.85, 1.1) + rng.uniform(0.0, 0.3) * ramp)[..., None]
    # A random window of a shared noise field costs far less than fresh normal draws.
    oy, ox = rng.integers(0, noise.shape[0] - h + 1), rng.integers(0, noise.shape[1] - w + 1)
    img = img + rng.uniform(2.0, 8.0) * noise[oy:oy + h, ox:ox + w]
    pil = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), mode='RGB')
    return pil.convert('L') if gray else pil


def _write_tree(root, params):
    rng = np.random.default_rng(params['seed'])
    n_prod = params['products_per_class']
    n_train = (n_prod + 1) // 2
    lo_n, hi_n = params['images_per_product']
    used_numbers = set()
    side = params['size_range'][1] + 64
    noise = rng.standard_normal((side, side, 3), dtype=np.float32)
    # Per-product generators, drawn in a fixed order, keep the tree identical run to run.
    products = []
    for super_id in range(12):
        folder = SUPER_CLASS_NAMES[super_id] + '_final'
        os.mkdir(os.path.join(root, folder))
        for k in range(n_prod):
            number = int(rng.integers(110000000000, 400000000000))
            while number in used_numbers:
                number += 1
            used_numbers.add(number)
            prng = np.random.default_rng([params['seed'], super_id, k])
            products.append((k >= n_train, super_id, folder, number, prng))
    # SOP lists train products first, each split ordered by super-class.
    products.sort(key=lambda p: (p[0], p[1]))

    lines = {'train': [], 'test': []}
    image_id = 0
    for class_id, (is_test, super_id, folder, number, prng) in enumerate(products, 1):
        prod = _product(prng, super_id)
        for n in range(int(prng.integers(lo_n, hi_n + 1))):
            gray = prng.random() < params['grayscale_fraction']
            img = _image(prng, super_id, prod, params['size_range'], gray, noise)
            rel = '{}/{}_{}.JPG'.format(folder, number, n)
            img.save(os.path.join(root, rel), format='JPEG', quality=JPEG_QUALITY)
            image_id += 1
            lines['test' if is_test else 'train'].append(
                '{} {} {} {}'.format(image_id, class_id, super_id + 1, rel))
    lines['all'] = lines['train'] + lines['test']
    for split, name in INDEX_FILES.items():
        with open(os.path.join(root, name), 'w') as f:
            f.write('\n'.join([INDEX_HEADER] + lines[split]) + '\n')
    # Written last: a tree with a marker is complete.
    with open(os.path.join(root, MARKER), 'w') as f:
        json.dump(params, f, sort_keys=True)
        f.write('\n')


def make_minisop(root, products_per_class=DEFAULTS['products_per_class'],
                 images_per_product=DEFAULTS['images_per_product'],
                 size_range=DEFAULTS['size_range'],
                 grayscale_fraction=DEFAULTS['grayscale_fraction'],
                 seed=DEFAULTS['seed'], overwrite=False):
    """Write a minisop tree directly at ``root`` and return its path.

    ``root`` then holds ``Ebay_train.txt``, ``Ebay_test.txt``, ``Ebay_info.txt`` and the
    12 ``<super_class>_final/`` folders, as ``Stanford_Online_Products/`` does. Each
    super-class has ``products_per_class`` products; the first half (rounded up) of each
    goes to train. A product has ``images_per_product`` = (min, max) images, each side is
    drawn from ``size_range`` and about ``grayscale_fraction`` of the JPEGs are grayscale.
    Same parameters give byte-identical files.

    If ``root`` already holds a minisop tree made with the same parameters it is kept.
    An existing non-empty ``root`` with anything else in it raises FileExistsError unless
    ``overwrite`` is true, in which case it is replaced.
    """
    params = _params(products_per_class, images_per_product, size_range,
                     grayscale_fraction, seed)
    root = os.path.abspath(root)
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    with filelock.FileLock(os.path.join(parent, '.{}.lock'.format(name))):
        if read_marker(root) == params:
            return root
        if os.path.isdir(root) and os.listdir(root) and not overwrite:
            what = 'a minisop tree with other parameters' if read_marker(root) else 'other files'
            raise FileExistsError(
                'minisop: {} already holds {}; choose an empty or new folder, or pass '
                'overwrite (--force on the command line) to replace it'.format(root, what))
        if os.path.exists(root) and not os.path.isdir(root):
            raise FileExistsError(
                'minisop: {} exists and is not a folder; choose another path'.format(root))
        tmp_prefix = '.{}.tmp-'.format(name)
        # Holding the lock, any temporary folder of ours is left over from a crashed writer.
        for entry in os.listdir(parent):
            if entry.startswith(tmp_prefix):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=tmp_prefix, dir=parent)
        try:
            os.chmod(tmp, 0o755)
            _write_tree(tmp, params)
            if os.path.isdir(root) and os.listdir(root):
                old = tempfile.mkdtemp(prefix=tmp_prefix, dir=parent)
                os.rename(root, os.path.join(old, 'old'))
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                # rename(2) replaces an empty folder in one step.
                os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


def default_cache_dir():
    return os.environ.get('DISTRIBUTED_CACHE') or os.path.join(
        os.path.expanduser('~'), '.cache', 'chainermn-sop-trainer')


def ensure_minisop(cache_dir=None, **overrides):
    """Path of the default minisop tree, written on first use and reused afterwards.

    The tree lives in ``cache_dir`` (default ``$DISTRIBUTED_CACHE``, else
    ``~/.cache/chainermn-sop-trainer``) under a name that carries the generator version
    and a hash of the parameters, so changing either makes a fresh tree. ``overrides``
    are keyword arguments of :func:`make_minisop`.
    """
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError('minisop: unknown parameter(s) {}; known: {}'.format(
            ', '.join(sorted(unknown)), ', '.join(sorted(DEFAULTS))))
    kwargs = dict(DEFAULTS, **overrides)
    params = _params(**kwargs)
    base = cache_dir or default_cache_dir()
    root = os.path.join(base, 'minisop-v{}-{}'.format(GENERATOR_VERSION, params_hash(params)))
    if read_marker(root) == params:
        return os.path.abspath(root)
    return make_minisop(root, **kwargs)
