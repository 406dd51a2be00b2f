import numpy as np
import pytest

from fetalkit.datasets.splits import block_groups, group_split, train_val_test_split


def _groups():
    return [f"s{i // 2}" for i in range(200)] + ["s_single"]


def test_group_split_never_leaks_a_group():
    g = _groups()
    tr, va = group_split(g, 0.25, seed=3)
    assert len(tr) + len(va) == len(g)
    assert not {g[i] for i in tr} & {g[i] for i in va}
    assert 0.2 < len(va) / len(g) < 0.3


def test_split_is_seeded():
    g = _groups()
    assert np.array_equal(group_split(g, 0.2, 1)[1], group_split(g, 0.2, 1)[1])
    assert not np.array_equal(group_split(g, 0.2, 1)[1], group_split(g, 0.2, 2)[1])


def test_three_way_split_disjoint_and_test_stable():
    g = _groups()
    tr, va, te = train_val_test_split(g, 0.15, 0.15, seed=0)
    parts = [{g[i] for i in p} for p in (tr, va, te)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(g)))
    _, _, te2 = train_val_test_split(g, 0.25, 0.15, seed=0)
    assert np.array_equal(te, te2)


def test_block_groups_and_bad_args():
    assert block_groups([0, 1, 9, 10, 25], 10) == [0, 0, 0, 1, 2]
    with pytest.raises(ValueError):
        group_split(["a", "a"], 0.5)
    with pytest.raises(ValueError):
        group_split(["a", "b"], 1.5)
