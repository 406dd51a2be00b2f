"""Tests for duplicate detection (fetalkit.preprocess.dedup)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from conftest import need_dataset

from fetalkit.errors import InputError
from fetalkit.preprocess.dedup import (DEFAULT_MAX_DISTANCE, DUPLICATE_COLUMNS, duplicate_groups,
                                       find_duplicate_pairs, find_duplicates, hamming_distance, hash_images,
                                       perceptual_hash)
from fetalkit.synth.phantom import head_phantom

SMALL_HW = (270, 400)


@pytest.fixture(scope="module")
def frames():
    return [head_phantom(seed=s, shape_hw=SMALL_HW).image for s in (11, 12)]


@pytest.fixture()
def folder(tmp_path, frames):
    """An original, its byte copy, a re-encoded copy (same pixels), a JPEG copy, a noisier
    copy, a brighter down-scaled copy, and an unrelated frame."""
    a, b = frames
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), a, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    shutil.copy(tmp_path / "a.png", tmp_path / "a_copy.png")
    cv2.imwrite(str(tmp_path / "a_reencoded.png"), a, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(str(tmp_path / "a_q80.jpg"), a, [cv2.IMWRITE_JPEG_QUALITY, 80])
    noisy = np.clip(a + rng.normal(0, 6, a.shape) * (a > 0), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a_noisy.png"), noisy)
    small = cv2.resize(cv2.add(a, 10), (300, 202), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "a_small_bright.png"), small)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    return tmp_path


def names(pair):
    return (pair.a.name, pair.b.name)


def test_perceptual_hash_is_256_bits_and_ignores_size(frames):
    a, b = frames
    h = perceptual_hash(a)
    assert h.shape == (4,) and h.dtype == np.uint64
    assert hamming_distance(h, perceptual_hash(a.copy())) == 0
    assert hamming_distance(h, perceptual_hash(cv2.resize(a, (800, 540)))) <= 4
    assert hamming_distance(h, perceptual_hash(b)) > 2 * DEFAULT_MAX_DISTANCE
    assert bin(int(h[0])).count("1") + sum(bin(int(w)).count("1") for w in h[1:]) == 128  # median split


def test_exact_and_near_duplicates_on_generated_files(folder):
    pairs = find_duplicates(sorted(folder.iterdir()))
    by_names = {names(p): p for p in pairs}
    # Exact: identical pixels, with or without identical bytes.
    assert by_names[("a.png", "a_copy.png")].kind == "exact" and by_names[("a.png", "a_copy.png")].identical_bytes
    reenc = by_names[("a.png", "a_reencoded.png")]
    assert reenc.kind == "exact" and reenc.distance == 0 and not reenc.identical_bytes
    # Near: re-compressed, re-noised, re-scaled and brighter copies, with their distance.
    for other in ("a_q80.jpg", "a_noisy.png", "a_small_bright.png"):
        p = by_names[("a.png", other)]
        assert p.kind == "near" and 0 <= p.distance <= DEFAULT_MAX_DISTANCE
    # The unrelated frame pairs with nothing; exact pairs come first.
    assert not any("b.png" in names(p) for p in pairs)
    assert [p.kind for p in pairs] == sorted((p.kind for p in pairs), key=lambda k: k != "exact")
    assert len([p for p in pairs if p.kind == "exact"]) == 3  # a, a_copy, a_reencoded: 3 pairs
    groups = duplicate_groups(pairs)
    assert [[q.name for q in g] for g in groups] == [["a.png", "a_copy.png", "a_noisy.png", "a_q80.jpg",
                                                      "a_reencoded.png", "a_small_bright.png"]]
    assert set(pairs[0].as_row()) == set(DUPLICATE_COLUMNS)


def test_exact_only_and_threshold(folder):
    paths = sorted(folder.iterdir())
    assert {p.kind for p in find_duplicates(paths, max_distance=-1)} == {"exact"}
    hashes, failures = hash_images(paths)
    assert not failures
    tight = find_duplicate_pairs(hashes, max_distance=0)
    loose = find_duplicate_pairs(hashes, max_distance=DEFAULT_MAX_DISTANCE)
    assert len(tight) < len(loose) and all(p.distance == 0 for p in tight)


def test_unreadable_file_is_named(folder):
    bad = folder / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.png"):
        find_duplicates(sorted(folder.iterdir()))
    hashes, failures = hash_images(sorted(folder.iterdir()))
    assert [f[0].name for f in failures] == ["broken.png"] and len(hashes) == 7


# --------------------------------------------------------------------------- real data

PSFHS_IDENTICAL = [("04316", "04398"), ("04319", "04323"), ("04403", "04404"), ("04943", "05000"),
                   ("04959", "05012"), ("05085", "05086")]


def test_psfhs_byte_identical_pairs_found():
    image_dir = need_dataset("psfhs") / "image"
    listed = [(image_dir / f"{a}.png", image_dir / f"{b}.png") for a, b in PSFHS_IDENTICAL]
    present = [pair for pair in listed if pair[0].is_file() and pair[1].is_file()]
    if not present:
        pytest.skip("none of the listed PSFHS duplicate pairs is in this copy of the data")
    # The pairs among some unrelated images from the same set.
    others = [p for p in sorted(image_dir.glob("*.png"))[::60] if not any(p in pair for pair in listed)]
    pairs = find_duplicates([p for pair in present for p in pair] + others, max_distance=-1)
    found = {(p.a, p.b) for p in pairs if p.kind == "exact" and p.identical_bytes}
    assert set(present) <= found
    assert len(pairs) == len(present)


def test_hc18_identical_pair_found():
    train = need_dataset("hc18") / "training_set"
    files = [train / "392_HC.png", train / "392_2HC.png"] + sorted(train.glob("0[0-4]?_HC.png"))[:10]
    pairs = find_duplicates(files)
    exact = [p for p in pairs if p.kind == "exact"]
    assert [(p.a.name, p.b.name, p.identical_bytes) for p in exact] == [("392_2HC.png", "392_HC.png", True)]
