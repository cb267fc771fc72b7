"""Index files as editors and spreadsheets save them, and splits too small for the job.

Each quirk is written into a copy of a minisop index: it is either read exactly as the
well-formed index is, or refused with one line saying what to change.
"""
import os
import shutil

import pytest

from distributed.config import load_config
from distributed.data import split_for_run, sop
from distributed.data.sop import DataError

from launching import TINY, run_launcher


@pytest.fixture
def tree(tmp_path, small_sop):
    """A copy of small_sop whose image folders are links: its index files can be edited."""
    root = tmp_path / 'sop'
    root.mkdir()
    for entry in os.listdir(small_sop):
        source = os.path.join(small_sop, entry)
        if os.path.isdir(source):
            os.symlink(source, str(root / entry))
        else:
            shutil.copy(source, str(root / entry))
    return root


def canonical(root):
    with open(os.path.join(str(root), sop.INDEX_FILES['train']), encoding='ascii') as f:
        return f.read().splitlines()


def write_train(root, data):
    (root / sop.INDEX_FILES['train']).write_bytes(data)


def loaded(root):
    """The train split as load_split gives it: [(path, label)]."""
    assert sop.check_tree(str(root)) is None
    split = sop.load_split(str(root), 'train')
    return [(path, int(label)) for path, label in split]


def test_a_well_formed_index_reads_as_chainercv_reads_it(tree):
    from chainercv.datasets import OnlineProductsDataset
    reference = OnlineProductsDataset(str(tree), split='train')
    assert loaded(tree) == list(zip(reference.paths, reference.super_class_ids.tolist()))


QUIRKS = {
    'trailing_blank_lines': lambda lines: '\n'.join(lines) + '\n\n\n  \n',
    'blank_lines_in_the_middle': lambda lines: '\n'.join(
        lines[:3] + ['', '   '] + lines[3:]) + '\n',
    'crlf': lambda lines: '\r\n'.join(lines) + '\r\n',
    'old_mac_cr': lambda lines: '\r'.join(lines),
    'no_final_newline': lambda lines: '\n'.join(lines),
    'tabs_and_spaces': lambda lines: '\n'.join(
        [lines[0]] + ['\t'.join(line.split()) if i % 2 else '   '.join(line.split())
                      for i, line in enumerate(lines[1:])]) + '\n',
    'whitespace_at_both_ends': lambda lines: '\n'.join(
        ' \t' + line + ' \t ' for line in lines) + '\n',
    'header_case_and_spaces': lambda lines: '\n'.join(
        ['Image_ID   Class_ID\tSUPER_CLASS_ID  Path '] + lines[1:]) + '\n',
    'blank_lines_before_the_header': lambda lines: '\n\n' + '\n'.join(lines) + '\n',
}


@pytest.mark.parametrize('quirk', sorted(QUIRKS))
def test_quirks_an_editor_shows_correctly_are_read(tree, quirk):
    expected = loaded(tree)
    write_train(tree, QUIRKS[quirk](canonical(tree)).encode('utf-8'))
    assert loaded(tree) == expected


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16', 'utf-16-le', 'utf-16-be'])
def test_byte_order_marks_and_utf16(tree, encoding):
    # utf-16-le and -be have no byte-order mark: the header line tells the byte order.
    expected = loaded(tree)
    write_train(tree, ('\r\n'.join(canonical(tree)) + '\r\n').encode(encoding))
    assert loaded(tree) == expected


def rename_first_image(root, lines, new_name):
    """Give the first image of the train index a new name on disk (its folder is a link:
    the image is copied into a real folder); the index lines with that name."""
    rel = lines[1].split()[3]
    folder, name = rel.split('/')
    real = root / (folder + '_real')
    shutil.copytree(os.path.realpath(str(root / folder)), str(real))
    os.unlink(str(root / folder))
    real.rename(root / folder)
    os.rename(str(root / folder / name), os.path.join(os.fsencode(str(root / folder)),
                                                      new_name))
    return rel, folder


def test_windows_1252_paths_name_the_file_an_editor_shows(tree):
    lines = canonical(tree)
    rel, folder = rename_first_image(tree, lines, 'café.JPG'.encode('utf-8'))
    fields = lines[1].split()
    edited = '\n'.join([lines[0], ' '.join(fields[:3] + [folder + '/café.JPG'])] + lines[2:])
    write_train(tree, edited.encode('cp1252'))
    rows = loaded(tree)
    assert rows[0][0] == os.path.join(str(tree), folder, 'café.JPG')
    assert os.path.isfile(rows[0][0])


def test_non_utf8_paths_name_a_file_with_those_bytes(tree):
    lines = canonical(tree)
    raw_name = 'café.JPG'.encode('cp1252')  # a name unzipped as it was stored
    rel, folder = rename_first_image(tree, lines, raw_name)
    fields = lines[1].split()
    edited = '\n'.join([lines[0], ' '.join(fields[:3] + [folder + '/café.JPG'])] + lines[2:])
    write_train(tree, edited.encode('cp1252'))
    rows = loaded(tree)
    assert os.fsencode(rows[0][0]) == os.path.join(os.fsencode(str(tree / folder)), raw_name)
    with open(rows[0][0], 'rb'):
        pass


def test_paths_with_spaces_are_the_rest_of_the_line(tree):
    lines = canonical(tree)
    rel, folder = rename_first_image(tree, lines, b'my photo  1.JPG')
    fields = lines[1].split()
    write_train(tree, '\n'.join([lines[0], '\t'.join(fields[:3]) + '\t' + folder
                                 + '/my photo  1.JPG  '] + lines[2:]).encode())
    assert loaded(tree)[0][0] == os.path.join(str(tree), folder, 'my photo  1.JPG')


def test_windows_backslashes_name_the_file_with_slashes(tree):
    expected = loaded(tree)
    lines = canonical(tree)
    write_train(tree, ('\r\n'.join([lines[0]] + [line.replace('/', '\\') for line in lines[1:]])
                       + '\r\n').encode())
    assert loaded(tree) == expected


def test_a_backslash_in_a_file_name_is_kept_where_that_file_exists(tree):
    # A POSIX file name may hold a backslash: the path as written comes first.
    lines = canonical(tree)
    rel, folder = rename_first_image(tree, lines, b'front\\1.JPG')
    fields = lines[1].split()
    write_train(tree, '\n'.join([lines[0], ' '.join(fields[:3] + [folder + '/front\\1.JPG'])]
                                + lines[2:]).encode())
    assert loaded(tree)[0][0] == os.path.join(str(tree), folder, 'front\\1.JPG')


def test_missing_backslash_and_quoted_paths_say_what_was_tried(tree):
    lines = canonical(tree)
    fields = lines[1].split()
    write_train(tree, '\n'.join([lines[0], ' '.join(fields[:3] + ['bicycle_final\\nope.JPG']),
                                 ' '.join(fields[:3] + ['"{}"'.format(fields[3])])]
                                + lines[3:]).encode())
    error = sop.check_tree(str(tree))
    assert '2 images listed' in error and 'bicycle_final\\nope.JPG' in error
    assert "were looked for with '/' too" in error
    assert 'remove the quotes' in error and '\n' not in error


REFUSED = {
    'no_header': (lambda lines: '\n'.join(lines[1:]),
                  "does not start with the SOP header line 'image_id class_id "
                  "super_class_id path' .*add that line at the top"),
    'commas': (lambda lines: '\n'.join(','.join(line.split()) for line in lines),
               'separates its fields with commas .*save it as text with spaces or tabs'),
    'semicolons': (lambda lines: '\n'.join(';'.join(line.split()) for line in lines),
                   'separates its fields with semicolons .a spreadsheet.s CSV.*; save it as '
                   'text with spaces or tabs between the fields and no quotes'),
    'double_quotes': (lambda lines: '\n'.join(' '.join('"{}"'.format(f) for f in line.split())
                                              for line in lines),
                      'puts its fields in double quotes .*save it as text with spaces'),
    'quoted_csv': (lambda lines: '\n'.join(','.join('"{}"'.format(f) for f in line.split())
                                           for line in lines),
                   'puts its fields in double quotes'),
    'csv_lines_under_a_typed_header': (
        lambda lines: '\n'.join(lines[:1] + [';'.join(line.split()) for line in lines[1:]]),
        'line 2: expected .* separates its fields with semicolons'),
    'utf16_without_bom_or_header': (
        lambda lines: '\n'.join(lines[1:]).encode('utf-16-le'),
        'holds zero bytes: it is UTF-16 without a byte-order mark and without the SOP header '
        'line .* save it as UTF-8 text that starts with that line'),
    'a_short_line': (lambda lines: '\n'.join(lines[:4] + ['17 3 1'] + lines[4:]),
                     'line 5: expected "image_id class_id super_class_id path" .*got '
                     "'17 3 1'; fix or delete that line"),
    'a_decimal_id': (lambda lines: '\n'.join(lines[:2] + ['9 1.0 1 a/b.JPG'] + lines[2:]),
                     "line 3: expected .*got '9 1.0 1 a/b.JPG'"),
}


@pytest.mark.parametrize('case', sorted(REFUSED))
def test_what_cannot_be_read_is_refused_with_one_line(tree, case):
    make, message = REFUSED[case]
    data = make(canonical(tree))
    write_train(tree, data if isinstance(data, bytes) else data.encode())
    error = sop.check_tree(str(tree))
    assert error is not None and '\n' not in error
    assert sop.INDEX_FILES['train'] in error
    with pytest.raises(DataError, match=message):
        sop.read_index(str(tree), 'train')


def test_a_file_for_data_root_is_named_as_a_file(tree, tmp_path):
    index = tree / sop.INDEX_FILES['train']
    assert sop.check_tree(str(index)) == (
        'data.root {} is a file, not the SOP folder; point data.root at the folder that holds '
        'it: data.root={}.'.format(index, tree))
    archive = tmp_path / 'Stanford_Online_Products.zip'
    archive.write_bytes(b'PK')
    assert 'is a file, not the SOP folder; unzip it' in sop.check_tree(str(archive))
    other = tmp_path / 'notes.txt'
    other.write_text('x')
    assert sop.check_tree(str(other)) == (
        'data.root {} is a file, not the SOP folder; point data.root at the '
        'Stanford_Online_Products folder, the one holding Ebay_train.txt and '
        'Ebay_test.txt.'.format(other))


def test_missing_non_ascii_paths_say_to_save_the_index_as_utf8(tree):
    lines = canonical(tree)
    fields = lines[1].split()
    edited = '\n'.join([lines[0], ' '.join(fields[:3] + ['chair_final/chaise_é.JPG'])]
                       + lines[2:])
    write_train(tree, edited.encode('cp1252'))
    error = sop.check_tree(str(tree))
    assert 'chaise_é.JPG' in error and 'save the index files as UTF-8' in error


@pytest.mark.slow
def test_the_whole_path_reads_an_edited_index(tree, tmp_path):
    # The command that reads both splits end to end (index check, listing, overlap check,
    # the images of the grids), on a train index saved with a BOM, CRLF and blank lines.
    lines = canonical(tree)
    write_train(tree, ('\r\n'.join(lines[:5] + [''] + lines[5:]) + '\r\n\r\n\r\n').encode(
        'utf-8-sig'))
    done = run_launcher('launch.view_samples', ['data.root={}'.format(tree), 'n=5',
                                                'out={}'.format(tmp_path / 'out')])
    assert done.returncode == 0, done.stderr
    assert 'train {} images'.format(len(lines) - 1) in done.stdout


def one_rank(config_overrides, one_rank_runtime):
    config = load_config(None, config_overrides + ['data.loader=serial'])
    return split_for_run(config, one_rank_runtime, 1)


def test_a_split_smaller_than_a_batch_is_refused_with_the_numbers(tree, one_rank_runtime):
    lines = canonical(tree)
    write_train(tree, '\n'.join(lines[:4]).encode())  # 3 images
    with pytest.raises(DataError) as caught:
        one_rank(['data.root={}'.format(tree), 'train.batch_size=4'], one_rank_runtime)
    message = str(caught.value)
    assert '\n' not in message
    assert ('has 3 images: 3 per chunk with 1 chunk (train.chunks), fewer than one batch '
            '(train.batch_size=4); set train.batch_size to at most 3') in message
    (tree / sop.INDEX_FILES['test']).write_text(lines[0] + '\n\n')
    with pytest.raises(DataError, match='the test split of .* has no images, so evaluation '
                       'during training cannot run; list images in .*Ebay_test.txt'):
        one_rank(['data.root={}'.format(tree), 'train.batch_size=2'], one_rank_runtime)


@pytest.mark.slow
def test_fewer_images_than_ranks_stops_every_rank_with_one_line(tree, tmp_path):
    lines = canonical(tree)
    write_train(tree, '\n'.join(lines[:3]).encode())  # 2 images, 3 ranks
    done = run_launcher('launch.train', TINY + ['data.root={}'.format(tree),
                                                'out={}'.format(tmp_path / 'out')], ranks=3)
    assert done.returncode == 2, done.stderr
    assert 'Traceback' not in done.stderr and 'ZeroDivisionError' not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert errors == ['error: the train split of {} has 2 images: 0 per chunk with 3 chunks '
                      '(train.chunks), fewer than one batch (train.batch_size=4); add images '
                      'to {}'.format(
                          tree, tree / sop.INDEX_FILES['train'])]


@pytest.mark.slow
def test_evaluate_stops_every_rank_on_an_empty_split(tree, tmp_path):
    from saved_models import save_model
    model = save_model(tmp_path / 'model.npz')
    (tree / sop.INDEX_FILES['test']).write_text(canonical(tree)[0] + '\n')
    done = run_launcher('launch.evaluate', TINY + ['data.root={}'.format(tree), 'model=' + model,
                                                   'out={}'.format(tmp_path / 'out')], ranks=2)
    assert done.returncode == 2, done.stderr
    assert 'Traceback' not in done.stderr
    assert ('error: the test split of {} has no images, so launch.evaluate cannot run'.format(
        tree)) in done.stderr
