"""scatter_splits: every rank gets a disjoint, equally long shard of the train split."""
import chainermn
import pytest

from distributed.config import load_config
from distributed.data import equal_shards, scatter_splits
from distributed.data import sop
from distributed.runtime import Runtime


def test_equal_shards_cut_to_a_multiple_and_keep_every_item_once():
    data = list(range(23))
    for size in (1, 2, 3, 8):
        cut = equal_shards(data, size, seed=0)
        items = [cut[i] for i in range(len(cut))]
        assert len(items) == 23 // size * size
        assert len(set(items)) == len(items)
    assert [equal_shards(data, 2, 0)[i] for i in range(4)] != list(range(4))  # shuffled


@pytest.mark.mpi
def test_train_shards_are_disjoint_equal_and_cover_the_split(small_sop, world):
    comm = chainermn.create_communicator('naive')
    runtime = Runtime(comm=comm, device=None)
    config = load_config(None, ['data.root=' + small_sop, 'data.loader=serial',
                                'train.batch_size=4'])
    train, test = scatter_splits(config, runtime)
    mine = [train[i][0] for i in range(len(train))]
    shards = comm.gather_obj(mine)
    tests = comm.gather_obj(len(test))
    if comm.rank == 0:
        everything = [path for _, _, path in sop.read_index(small_sop, 'train')]
        flat = sum(shards, [])
        assert len({len(s) for s in shards}) == 1                # equal length
        assert len(set(flat)) == len(flat)                         # disjoint
        assert len(everything) - len(flat) < comm.size            # at most size-1 left out
        assert {p[len(small_sop) + 1:] for p in flat} <= set(everything)
        assert sum(tests) == len(sop.read_index(small_sop, 'test'))
