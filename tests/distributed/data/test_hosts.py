"""Every host must see rank 0's SOP tree at data.root: sop.index_digest and check_hosts.
(Across real hosts: tests/system/test_multinode.py.)"""
from distributed.data import sop


def test_the_same_tree_everywhere_passes(tiny_sop):
    digest = sop.index_digest(str(tiny_sop))
    assert digest and len(digest) == 40
    assert sop.check_hosts(str(tiny_sop), [('a', digest), ('a', digest), ('b', digest)]) is None


def test_hosts_without_the_tree_or_with_another_are_named_with_their_ranks(tiny_sop, tmp_path):
    root = str(tiny_sop)
    digest = sop.index_digest(root)
    assert sop.index_digest(str(tmp_path / 'nothing')) is None
    other = tmp_path / 'other'
    other.mkdir()
    for name in ('Ebay_train.txt', 'Ebay_test.txt'):
        (other / name).write_text(sop.INDEX_HEADER + '\n')
    seen = [('n1', digest), ('n2', None), ('n2', None), ('n3', sop.index_digest(str(other)))]
    message = sop.check_hosts(root, seen)
    assert message.startswith('data.root {}: '.format(root)), message
    assert 'not there on n2 (ranks 1 2)' in message, message
    assert 'different index files on n3 (rank 3)' in message, message
    assert 'n1' not in message and '\n' not in message, message
