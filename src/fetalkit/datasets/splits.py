"""The one place where datasets are split: by group (subject / id block), never by frame."""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import numpy as np


def group_split(groups: Sequence[Hashable], val_fraction: float = 0.2, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into train / validation so that no group is on both sides.

    Parameters
    ----------
    groups : one group key per item (e.g. the subject id of each image).
    val_fraction : fraction of groups (not items) sent to validation.
    seed : seed of the shuffle of the sorted unique groups, so a split is reproducible.

    Returns
    -------
    (train_indices, val_indices), sorted int arrays.

    >>> tr, va = group_split(["a", "a", "b", "c"], val_fraction=0.34, seed=0)
    >>> sorted(set(tr) | set(va)) == [0, 1, 2, 3]
    True
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    keys = np.asarray([str(g) for g in groups])
    unique = np.array(sorted(set(keys.tolist())))
    if len(unique) < 2:
        raise ValueError("need at least two groups to split")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
    val_groups = set(unique[order[:n_val]].tolist())
    is_val = np.array([k in val_groups for k in keys])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def block_groups(ids: Sequence[int], block_size: int) -> list[int]:
    """Group consecutive integer ids into blocks (for sets whose neighbouring ids share an acquisition)."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    return [int(i) // block_size for i in ids]


SOURCE_SEP = "::"  # a group "psfhs::12" belongs to source "psfhs"; each source is split apart


def by_source(groups: Sequence[Hashable]) -> Optional[list[np.ndarray]]:
    """Item indices per source (the text before ``::`` in a group), or None when there is one source.

    A set joined from several sources (``fetalkit data boxes --all-sources``) is split source
    by source, so that each source's parts are those it has alone (``psfhs::12`` sorts among
    ``psfhs::*`` as ``12`` among the PSFHS groups: the PSFHS test part does not move).
    """
    keys = [str(g) for g in groups]
    names = [k.split(SOURCE_SEP, 1)[0] if SOURCE_SEP in k else "" for k in keys]
    if len(set(names)) < 2:
        return None
    return [np.flatnonzero(np.array(names) == n) for n in sorted(set(names))]


def train_val_test_split(groups: Sequence[Hashable], val_fraction: float = 0.15, test_fraction: float = 0.15,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three-way group split: a held-out test part first, then train / validation from the rest.

    The test part depends only on ``seed`` and ``test_fraction``, so changing the
    validation fraction never moves an item into or out of the test part.  Groups of
    several sources (``source::group``) are split source by source (:func:`by_source`).
    """
    sources = by_source(groups)
    if sources is not None:
        parts = [train_val_test_split([groups[i] for i in idx], val_fraction, test_fraction, seed) for idx in sources]
        return tuple(np.sort(np.concatenate([idx[p[j]] for idx, p in zip(sources, parts)])) for j in range(3))
    dev, test = group_split(groups, test_fraction, seed)
    dev_groups = [groups[i] for i in dev]
    tr, va = group_split(dev_groups, val_fraction / (1.0 - test_fraction), seed + 1)
    return dev[tr], dev[va], test


SPLIT_PARTS = ("train", "val", "test")


def select_split(groups: Sequence[Hashable], split: str, seed: int = 0, val_fraction: float = 0.15,
                 test_fraction: float = 0.15) -> np.ndarray:
    """Indices of one part (``train`` / ``val`` / ``test``) of :func:`train_val_test_split`, or ``all``.

    Training and evaluation both call this, so ``eval --split test`` scores exactly
    the items the training run held out.
    """
    if split == "all":
        return np.arange(len(groups))
    if split not in SPLIT_PARTS:
        raise ValueError(f"unknown split {split!r}; use train, val, test or all")
    parts = train_val_test_split(groups, val_fraction, test_fraction, seed)
    return parts[SPLIT_PARTS.index(split)]


def split_seed_of(seed: int, split_seed: Optional[int]) -> int:
    """The seed of a run's train / val / test split: ``split_seed`` when set, else the run's ``seed``."""
    return seed if split_seed is None else split_seed


def group_folds(groups: Sequence[Hashable], k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint parts of the item indices, whole groups each (block cross-validation).

    The sorted unique groups are shuffled by ``seed`` and dealt out in turn, so fold sizes
    differ by at most one group.

    >>> [f.tolist() for f in group_folds(["a", "a", "b", "c", "d"], 2, seed=0)]
    [[2, 3], [0, 1, 4]]
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    sources = by_source(groups)
    if sources is not None:  # every source dealt into the k folds on its own
        per = [group_folds([groups[i] for i in idx], k, seed) for idx in sources]
        return [np.sort(np.concatenate([idx[f[j]] for idx, f in zip(sources, per)])) for j in range(k)]
    keys = np.asarray([str(g) for g in groups])
    unique = np.array(sorted(set(keys.tolist())))
    if len(unique) < k:
        raise ValueError(f"{len(unique)} groups cannot fill {k} folds; use fewer folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {str(unique[j]): n % k for n, j in enumerate(order)}
    which = np.array([fold_of[g] for g in keys])
    return [np.flatnonzero(which == f) for f in range(k)]


def cv_folds(groups: Sequence[Hashable], k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs of ``k``-fold block cross-validation over the
    development part (train + val of :func:`train_val_test_split`): the test part of
    ``seed`` is never in any fold, so choosing a recipe by CV leaves it unseen."""
    train, val, _ = train_val_test_split(groups, seed=seed)
    dev = np.sort(np.concatenate([train, val]))
    folds = group_folds([groups[i] for i in dev], k, seed)
    return [(np.sort(dev[np.concatenate([f for j, f in enumerate(folds) if j != i])]), dev[fold])
            for i, fold in enumerate(folds)]
