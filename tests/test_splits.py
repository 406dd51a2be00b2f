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


def test_sources_are_split_apart_and_keep_their_own_parts():
    """Groups 'source::group' (a set joined from several sources) split source by source: each
    source's parts are the ones it has alone, so joining sources never moves a test image."""
    from fetalkit.datasets.splits import by_source, cv_folds, select_split
    alone = [f"g{i // 3}" for i in range(90)]
    joined = ["psfhs::" + g for g in alone] + [f"hc18::s{i}" for i in range(40)] + [f"neg::n{i}" for i in range(12)]
    assert by_source(alone) is None and len(by_source(joined)) == 3
    for part in ("train", "val", "test"):
        mine = select_split(joined, part, 0)
        assert np.array_equal(mine[mine < 90], select_split(alone, part, 0)), part
        assert (mine >= 90).any(), f"every source has a {part} part"
    folds = cv_folds(joined, 3, 0)
    assert all({joined[i].split("::")[0] for i in held} == {"psfhs", "hc18", "neg"} for _, held in folds)
    test = set(select_split(joined, "test", 0).tolist())
    assert not any(test & set(held.tolist()) for _, held in folds)


def test_all_public_sources_make_one_detection_set(tmp_path):
    from conftest import need_dataset
    from fetalkit.detection.sources import all_sources_set
    root = need_dataset("psfhs").parent
    need_dataset("hc18")
    ds, pixels = all_sources_set(root)
    by = {}
    for s in ds.samples:
        by.setdefault(s.tags["source"], []).append(s)
    assert ds.categories == ["pubic_symphysis", "fetal_head"]
    hc18 = by["hc18"]
    assert hc18 and all(s.labels.tolist() == [1] for s in hc18), "HC18: one head box, no symphysis"
    assert all(s.group.startswith("hc18::") and s.file_name.startswith("hc18/") for s in hc18)
    negatives = by.get("negatives", [])
    if (root / "feecho4d").is_dir():
        assert negatives and all(s.is_negative and s.file_name in pixels for s in negatives)
        assert all(s.tags["view"] in ("fetal_heart", "other_fetal_plane") for s in negatives)
