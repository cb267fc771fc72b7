"""The Stanford Online Products (SOP) format: label names, index files, validation."""
import codecs
import hashlib
import os
import re

import chainer
import numpy

# The 12 super-classes in SOP order (super_class_id 1..12). chainercv's
# online_products_super_label_names misspells two of them ('chainer', 'coffe_maker').
SUPER_CLASS_NAMES = (
    'bicycle', 'cabinet', 'chair', 'coffee_maker', 'fan', 'kettle',
    'lamp', 'mug', 'sofa', 'stapler', 'table', 'toaster',
)

INDEX_FILES = {'train': 'Ebay_train.txt', 'test': 'Ebay_test.txt', 'all': 'Ebay_info.txt'}
INDEX_HEADER = 'image_id class_id super_class_id path'

GET_SOP = ('Stanford Online Products (2.9 GB) comes from '
           'https://cvgl.stanford.edu/projects/lifted_struct/ '
           '(ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip); unzip it and set '
           'data.root=/path/to/Stanford_Online_Products, or use data.root=minisop for the '
           'small generated stand-in')


class DataError(ValueError):
    """The dataset cannot be used as configured; the message says what to do."""


def read_index(root, split):
    """``[(class_id, super_class_id, path)]`` of an index file (ids 0-based, ``path``
    relative to ``root``, as written); raises ``DataError`` naming the line to change.

    The file is read as a text editor shows it (encodings, line endings, blank lines,
    spacing, a header in any case, Windows' backslashes, legacy Windows-1252 names); a
    spreadsheet's CSV is refused, saying so: docs/running.md ("The data") lists each case.
    """
    path = os.path.join(root, INDEX_FILES[split])
    with open(path, 'rb') as f:
        raw = f.read()
    lines = _text_lines(raw)
    numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    header = numbered[0][1] if numbered else ''
    if isinstance(header, bytes):
        header = header.decode('cp1252', 'replace')
    if not _is_header(header):
        raise DataError(_not_a_header(path, header, numbered, raw))
    rows = []
    for number, line in numbered[1:]:
        if isinstance(line, bytes):
            line = _legacy_line(root, line)
        fields = line.split(None, 3)
        try:
            _, class_id, super_id, rel = fields
            rows.append((int(class_id) - 1, int(super_id) - 1, _windows_path(root, rel)))
        except ValueError:
            raise DataError('{} line {}: expected "image_id class_id super_class_id path" '
                            '(three whole numbers, then the image path), got {!r}; {}'.format(
                                path, number, line, _spreadsheet(line, header=False)
                                or 'fix or delete that line'))
        if not 0 <= rows[-1][1] < len(SUPER_CLASS_NAMES):
            raise DataError('{} line {}: super_class_id {} is outside 1..{}'.format(
                path, number, super_id, len(SUPER_CLASS_NAMES)))
    return rows


def _not_a_header(path, header, numbered, raw):
    """Why an index file's first line is not the SOP header, and what to do."""
    if b'\0' in raw:
        # UTF-16 has a zero byte beside every ASCII character; with the header first,
        # _text_lines would have read it.
        return ('{} holds zero bytes: it is UTF-16 without a byte-order mark and without '
                'the SOP header line {!r} first, or not a text file; save it as UTF-8 text '
                'that starts with that line'.format(path, INDEX_HEADER))
    hint = _spreadsheet(header)
    if hint:
        return '{} {}'.format(path, hint)
    return ('{} does not start with the SOP header line {!r} (its first line holds {}); add '
            'that line at the top if this is an SOP index file'.format(
                path, INDEX_HEADER, repr(header[:60]) if numbered else 'nothing'))


def _spreadsheet(line, header=True):
    """What to do with a line as a spreadsheet saves it (CSV), or ''. A header line that
    is not the header may be one in any such dress; an image line is one only if its
    first three fields are whole numbers once the quotes, commas and semicolons are gone
    (a path may hold any of them)."""
    fields = [f for f in re.split(r'[\s,;]+', line.replace('"', '')) if f]
    if not header and not (len(fields) >= 4 and all(f.isdigit() for f in fields[:3])):
        return ''
    what = ('puts its fields in double quotes' if '"' in line
            else 'separates its fields with semicolons' if ';' in line
            else 'separates its fields with commas' if ',' in line else '')
    if not what:
        return ''
    return ('{} (a spreadsheet\'s CSV?); save it as text with spaces or tabs between the '
            'fields and no quotes'.format(what))


def _windows_path(root, rel):
    """``rel`` as written, or with '/' for Windows' '\\' between folders where only that
    names a file."""
    if '\\' not in rel or os.path.isfile(os.path.join(root, rel)):
        return rel
    posix = rel.replace('\\', '/')
    return posix if os.path.isfile(os.path.join(root, posix)) else rel


def _text_lines(raw):
    """The lines of an index file's bytes: str where they decode, bytes where a line is
    not UTF-8 (resolved by ``_legacy_line``)."""
    for bom, codec in ((codecs.BOM_UTF16_LE, 'utf-16'), (codecs.BOM_UTF16_BE, 'utf-16'),
                       (codecs.BOM_UTF8, 'utf-8-sig')):
        if raw.startswith(bom):
            if codec == 'utf-8-sig':
                raw = raw[len(bom):]
                break
            return raw.decode(codec).splitlines()
    if b'\0' in raw:
        # UTF-16 without a byte-order mark: the header line, ASCII, tells the byte order
        # (read in the other one it is a line of CJK characters). No UTF-8 text has a
        # zero byte.
        for codec in ('utf-16-le', 'utf-16-be'):
            try:
                lines = raw.decode(codec).splitlines()
            except UnicodeDecodeError:
                continue
            first = next((line for line in lines if line.strip()), '')
            if _is_header(first.strip()):
                return lines
    lines = []
    for line in raw.splitlines():
        try:
            lines.append(line.decode('utf-8'))
        except UnicodeDecodeError:
            lines.append(line)
    return lines


def _legacy_line(root, line):
    """A non-UTF-8 index line as text: its bytes kept as they are (POSIX file names are
    bytes) when they name a file under ``root``, else read as Windows-1252."""
    kept = line.decode('utf-8', 'surrogateescape')
    legacy = line.decode('cp1252', 'replace')
    fields = kept.split(None, 3)
    if len(fields) == 4 and os.path.isfile(os.path.join(root, fields[3])):
        return kept
    return legacy


def _is_header(line):
    return [field.lower() for field in line.split()] == INDEX_HEADER.split()


def index_digest(root):
    """SHA-1 (hex str) of the train and test index files under ``root`` as this host sees
    them, or None where either cannot be read. A few MB on the real SOP."""
    digest = hashlib.sha1()
    try:
        for split in ('train', 'test'):
            with open(os.path.join(root, INDEX_FILES[split]), 'rb') as f:
                digest.update(f.read())
    except OSError:
        return None
    return digest.hexdigest()


def check_hosts(root, seen):
    """An error message naming the hosts where ``root`` is not the SOP tree rank 0 checked,
    or None. ``seen``: (host name, ``index_digest(root)`` there) of every rank, rank 0's
    first. Each host reads the images under its own ``root``: a host that lacks the tree
    (no shared filesystem, a copy not made) or has another one there would fail or train
    on other images only once the job is running."""
    missing, different = {}, {}
    for rank, (host, digest) in enumerate(seen):
        if digest != seen[0][1]:
            (missing if digest is None else different).setdefault(host, []).append(rank)
    if not (missing or different):
        return None

    def named(hosts):
        return ', '.join('{} ({} {})'.format(host, 'rank' if len(ranks) == 1 else 'ranks',
                                             ' '.join(map(str, ranks)))
                         for host, ranks in hosts.items())
    problems = (['not there on {}'.format(named(missing))] if missing else []) + (
        ['different index files on {}'.format(named(different))] if different else [])
    return ('data.root {}: {}; every host must see the same SOP tree at that path (a shared '
            'filesystem, or a copy on each host).'.format(root, ' and '.join(problems)))


def check_tree(root):
    """An error message for an unusable SOP tree at ``root``, or None when it is fine."""
    if os.path.exists(root) and not os.path.isdir(root):
        name, folder = os.path.basename(root), os.path.dirname(root)
        if name in INDEX_FILES.values():
            hint = 'point data.root at the folder that holds it: data.root={}'.format(folder)
        elif name.lower().endswith('.zip'):
            hint = 'unzip it and point data.root at the Stanford_Online_Products folder inside'
        else:
            hint = ('point data.root at the Stanford_Online_Products folder, the one holding '
                    '{} and {}'.format(INDEX_FILES['train'], INDEX_FILES['test']))
        return 'data.root {} is a file, not the SOP folder; {}.'.format(root, hint)
    if not os.path.isdir(root):
        return 'data.root {} does not exist. {}.'.format(root, GET_SOP)
    for split in ('train', 'test'):
        index = os.path.join(root, INDEX_FILES[split])
        if not os.path.isfile(index):
            nested = os.path.join(root, 'Stanford_Online_Products', INDEX_FILES[split])
            hint = (' It is in {}: point data.root there.'.format(os.path.dirname(nested))
                    if os.path.isfile(nested) else ' ' + GET_SOP + '.')
            return 'data.root {} has no {}, so it is not an SOP tree.{}'.format(
                root, INDEX_FILES[split], hint)
    try:
        missing = [rel for split in ('train', 'test') for _, _, rel in read_index(root, split)
                   if not os.path.isfile(os.path.join(root, rel))]
    except DataError as e:
        return str(e)
    if missing:
        hint = ''
        if any(not rel.isascii() for rel in missing):
            hint = (' Paths with characters beyond ASCII must be spelt as the file names '
                    'are: save the index files as UTF-8 (an editor may have saved them in '
                    'a legacy encoding such as Windows-1252).')
        if any('\\' in rel for rel in missing):
            hint += (" Paths with Windows' '\\' between folders were looked for with '/' "
                     'too, and are missing either way.')
        if any(rel[:1] in '"\'' and rel[-1:] == rel[:1] for rel in missing):
            hint += (' Paths are not quoted in an SOP index file (a path is the rest of its '
                     'line): remove the quotes.')
        return ('{} images listed in the index files of {} are missing, e.g. {}. Restore '
                'them (unzip SOP again) or fix the index files.{}'.format(
                    len(missing), root, ', '.join(missing[:10]), hint))
    return None


def load_split(root, split):
    """The split as (image file path, super_label) pairs, a ``TupleDataset``: paths joined
    to ``root``, labels int32 0-based; what chainercv's ``OnlineProductsDataset`` reads
    from a well-formed index, which its reader cannot do from an index with blank lines,
    non-UTF-8 bytes or spaces in paths (``read_index``). The transforms decode the files.
    """
    rows = read_index(root, split)
    paths = [os.path.join(root, rel) for _, _, rel in rows]
    labels = numpy.array([super_id for _, super_id, _ in rows], numpy.int32)
    return chainer.datasets.TupleDataset(paths, labels)
