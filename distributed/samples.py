"""Look at the data: grids of random images per split, and the train/test overlap check.

The grids follow the tutorial's ``view_dataset_samples``: images resized to 200x200, five
per row, titled ``super_class_id:name`` (0-based ids, the right names). The overlap check
answers the tutorial's question whether train and test images are really disjoint: SOP
splits by product, so no product (class id) and no image file (by content) may be in both.
"""
import dataclasses
import hashlib
import os
import random
import typing

from distributed.config import Config, ConfigError, build, validate
from distributed.data import resolve_root, sop
from distributed.data.images import UnreadableImage, open_image

PER_ROW = 5
SIDE = 200
EXAMPLES = 5
POSITIVE = ('n',)
"""Keys that must be at least 1 (the configuration reference reads it too)."""


@dataclasses.dataclass
class SamplesConfig(Config):
    split: typing.Literal['train', 'test', 'both'] = 'both'
    """Which splits to draw a sample grid of: 'train', 'test' or 'both'."""
    n: int = 10
    """Random images per grid, five per row (drawn with train.seed)."""
    strict: bool = False
    """Fail (non-zero exit) when train and test share products or identical image files."""


def load_samples_config(path=None, overrides=()):
    """The validated ``SamplesConfig`` (the training keys are read and checked too)."""
    config = validate(build(SamplesConfig, path, overrides))
    for key in POSITIVE:
        if getattr(config, key) < 1:
            raise ConfigError(f'{key} must be at least 1, not {getattr(config, key)}')
    return config


def splits_of(config):
    return ('train', 'test') if config.split == 'both' else (config.split,)


def sample_grid(dataset, n, seed, title, path, names=sop.SUPER_CLASS_NAMES):
    """A PNG of ``n`` random (image file, super_label) examples of ``dataset``; the tiles'
    titles. A file that does not decode gets an empty tile saying so."""
    from matplotlib.figure import Figure
    indices = random.Random(seed).sample(range(len(dataset)), min(n, len(dataset)))
    rows = max(1, -(-len(indices) // PER_ROW))
    fig = Figure(figsize=(12, 2.6 * rows + 0.6))
    fig.suptitle(title, fontsize=16)
    titles = []
    for i, index in enumerate(indices):
        image_path, label = dataset[index]
        ax = fig.add_subplot(rows, PER_ROW, i + 1)
        ax.set_axis_off()
        titles.append('{}:{}'.format(int(label), names[int(label)]))
        try:
            ax.imshow(open_image(image_path).region(None, (SIDE, SIDE)))
        except UnreadableImage:
            titles[-1] += ' (unreadable)'
            ax.text(0.5, 0.5, os.path.basename(image_path) + '\ndoes not decode', ha='center',
                    va='center', fontsize=8, transform=ax.transAxes)
        ax.set_title(titles[-1])
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    return titles


def write_grids(config, root):
    """``out/samples_<split>.png`` for the configured splits; the paths written."""
    os.makedirs(config.out, exist_ok=True)
    written = []
    for split in splits_of(config):
        dataset = sop.load_split(root, split)
        path = os.path.join(config.out, 'samples_{}.png'.format(split))
        sample_grid(dataset, config.n, config.train.seed,
                    'sample dataset for {} ({} images)'.format(split, len(dataset)), path)
        written.append(path)
    return written


def file_hash(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha1').hexdigest()


@dataclasses.dataclass
class Overlap:
    sizes: dict
    """Images and products per split: {'train': (images, products), 'test': ...}."""
    products: list
    """[(class_id (1-based, as in the index files), train path, test path)] in both splits."""
    files: list
    """[(train path, test path)] of byte-identical image files listed in both splits."""

    @property
    def found(self):
        return bool(self.products or self.files)


def find_overlap(root):
    """Products and identical image files (sha1 of the bytes) shared by train and test."""
    rows = {split: sop.read_index(root, split) for split in ('train', 'test')}
    first = {split: {} for split in rows}
    for split, index in rows.items():
        for class_id, _, rel in index:
            first[split].setdefault(class_id, rel)
    shared = sorted(set(first['train']) & set(first['test']))
    products = [(c + 1, first['train'][c], first['test'][c]) for c in shared]
    train_hashes = {}
    for _, _, rel in rows['train']:
        train_hashes.setdefault(file_hash(os.path.join(root, rel)), rel)
    files = []
    for _, _, rel in rows['test']:
        twin = train_hashes.get(file_hash(os.path.join(root, rel)))
        if twin is not None:
            files.append((twin, rel))
    sizes = {split: (len(index), len(first[split])) for split, index in rows.items()}
    return Overlap(sizes=sizes, products=products, files=files)


def format_overlap(overlap, root):
    """The check's report: sizes, then counts and a few examples of each kind of overlap."""
    lines = ['train/test overlap in {}: train {} images of {} products, test {} images of {} '
             'products'.format(root, *overlap.sizes['train'], *overlap.sizes['test'])]
    lines.append('  products in both splits: {}'.format(len(overlap.products)))
    for class_id, train, test in overlap.products[:EXAMPLES]:
        lines.append('    class_id {}: {} (train), {} (test)'.format(class_id, train, test))
    lines.append('  identical image files in both splits: {}'.format(len(overlap.files)))
    for train, test in overlap.files[:EXAMPLES]:
        lines.append('    {} (train) = {} (test)'.format(train, test))
    lines.append('  -> {}'.format('OVERLAP: test accuracy would overstate generalisation'
                                  if overlap.found else 'none: the splits are disjoint'))
    return '\n'.join(lines)


def view_samples(config):
    """Write the grids and run the overlap check; (grid paths, Overlap, report text)."""
    root = resolve_root(config.data.root)
    error = sop.check_tree(root)
    if error:
        raise sop.DataError(error)
    written = write_grids(config, root)
    overlap = find_overlap(root)
    return written, overlap, format_overlap(overlap, root)
