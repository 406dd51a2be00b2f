import doctest
import zlib

import numpy as np
import pytest

import fetalkit.datasets.psfhs as psfhs_module
from fetalkit.datasets.psfhs import (CLASS_NAMES, DUPLICATE_PAIRS, FH_LABEL, PS_LABEL, list_psfhs, psfhs_groups,
                                     read_mha, read_psfhs_image, write_mha)
from fetalkit.datasets.splits import train_val_test_split
from fetalkit.errors import DataError, InputError
from fetalkit.io.images import write_image

from conftest import need_dataset


def test_constants():
    assert CLASS_NAMES[PS_LABEL] == "pubic_symphysis" and CLASS_NAMES[FH_LABEL] == "fetal_head"


# --------------------------------------------------------------------------- MetaImage


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_mha_round_trip(tmp_path, compressed, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((3, 20, 30)) * 200).astype(dtype)
    path = write_mha(tmp_path / "a.mha", array, compressed=compressed, spacing=(0.5, 0.25, 2.0))
    back, header = read_mha(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 20, 30)
    assert np.array_equal(back, array)
    assert header["spacing"] == (0.5, 0.25, 2.0)
    assert header["DimSize"] == [30, 20, 3]  # x, y, z: reversed numpy order
    assert header["CompressedData"] == str(compressed)


def test_compressed_file_is_a_zlib_stream_and_smaller(tmp_path):
    label = np.zeros((256, 256), np.uint8)
    label[40:60, 100:150] = 1
    label[80:200, 60:200] = 2
    plain = write_mha(tmp_path / "plain.mha", label)
    packed = write_mha(tmp_path / "packed.mha", label, compressed=True)
    assert packed.stat().st_size < plain.stat().st_size / 10
    raw = packed.read_bytes()
    start = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    assert zlib.decompress(raw[start:]) == label.tobytes()
    assert np.array_equal(read_psfhs_image(packed), label)


def test_channels_big_endian_and_detached_data(tmp_path):
    rgb = np.dstack([np.arange(12, dtype=np.uint8).reshape(3, 4)] * 3)
    back, header = read_mha(write_mha(tmp_path / "c.mha", rgb, channels_last=True))
    assert back.shape == (3, 4, 3) and header["ElementNumberOfChannels"] == 3
    assert np.array_equal(read_psfhs_image(tmp_path / "c.mha"), rgb[..., 0])
    # Big-endian shorts in a detached raw file named relative to the header.
    values = np.array([[1, 300], [-2, 40000 - 65536]], dtype=">i2")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.raw").write_bytes(values.tobytes())
    (tmp_path / "sub" / "d.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_SHORT\n"
        "BinaryDataByteOrderMSB = True\nElementSpacing = 0.1 0.2\nElementDataFile = d.raw\n")
    back, header = read_mha(tmp_path / "sub" / "d.mhd")
    assert back.dtype == np.int16 and back.tolist() == values.tolist()
    assert header["spacing"] == (0.1, 0.2)


def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    png = write_image(tmp_path / "not_mha.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="not_mha.png: not a MetaImage"):
        read_mha(png)
    text = tmp_path / "notes.mha"
    text.write_text("hello world\n")
    with pytest.raises(InputError, match="notes.mha: not a MetaImage"):
        read_mha(text)
    with pytest.raises(InputError, match="missing.mha: file not found"):
        read_mha(tmp_path / "missing.mha")

    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    good = write_mha(tmp_path / "good.mha", image).read_bytes()
    (tmp_path / "short.mha").write_bytes(good[:-100])
    with pytest.raises(InputError, match="short.mha: truncated pixel data"):
        read_mha(tmp_path / "short.mha")
    packed = write_mha(tmp_path / "packed.mha", image, compressed=True).read_bytes()
    (tmp_path / "short_z.mha").write_bytes(packed[:-200])
    with pytest.raises(InputError, match="short_z.mha: truncated compressed"):
        read_mha(tmp_path / "short_z.mha")
    (tmp_path / "odd.mha").write_bytes(good.replace(b"MET_USHORT", b"MET_FOO"))
    with pytest.raises(InputError, match="odd.mha: unsupported ElementType 'MET_FOO'"):
        read_mha(tmp_path / "odd.mha")
    (tmp_path / "chan.mha").write_bytes(good.replace(b"ElementType", b"ElementNumberOfChannels = x\nElementType"))
    with pytest.raises(InputError, match="chan.mha: MetaImage field ElementNumberOfChannels"):
        read_mha(tmp_path / "chan.mha")
    (tmp_path / "gone.mhd").write_text(
        "NDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\nElementDataFile = gone.raw\n")
    with pytest.raises(InputError, match="gone.mhd: data file .*gone.raw"):
        read_mha(tmp_path / "gone.mhd")


def test_read_psfhs_image_refuses_differing_planes_and_wide_values(tmp_path):
    planes = np.zeros((3, 8, 8), np.uint8)
    planes[1, 0, 0] = 5
    with pytest.raises(InputError, match="planes.mha: 3 planes that differ"):
        read_psfhs_image(write_mha(tmp_path / "planes.mha", planes))
    wide = np.full((8, 8), 1000, np.uint16)
    with pytest.raises(InputError, match="wide.mha: .*outside 0..255"):
        read_psfhs_image(write_mha(tmp_path / "wide.mha", wide))
    narrow = np.full((8, 8), 2, np.uint16)  # a label map saved as 16-bit keeps its values
    assert read_psfhs_image(write_mha(tmp_path / "narrow.mha", narrow)).tolist() == narrow.tolist()


# --------------------------------------------------------------------------- dataset layout


def _fake_psfhs(root, ids, label_value=2, png=True):
    image_dir, label_dir = ("image", "label") if png else ("image_mha", "label_mha")
    for i in ids:
        image = np.full((16, 16), 7, np.uint8)
        label = np.zeros((16, 16), np.uint8)
        label[2:5, 2:5] = 1
        label[8:14, 8:14] = label_value
        if png:
            write_image(root / image_dir / f"{i}.png", image)
            write_image(root / label_dir / f"{i}.png", label)
        else:
            write_mha(root / image_dir / f"{i}.mha", np.stack([image] * 3))
            write_mha(root / label_dir / f"{i}.mha", label, compressed=True)


def test_list_psfhs_both_layouts(tmp_path):
    _fake_psfhs(tmp_path / "png", ["00002", "00001"])
    _fake_psfhs(tmp_path / "mha", ["00001"], png=False)
    for root in (tmp_path / "png", tmp_path / "mha"):
        items = list_psfhs(root)
        assert [i.image_id for i in items] == sorted(i.image_id for i in items)
        image, label = items[0].load()
        assert image.shape == label.shape == (16, 16) and image.dtype == label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1, 2}


def test_list_psfhs_errors(tmp_path):
    with pytest.raises(DataError, match="expected PSFHS folders"):
        list_psfhs(tmp_path)
    _fake_psfhs(tmp_path / "bad", ["00001"], label_value=3)
    with pytest.raises(DataError, match=r"00001.png: label values \[3\] outside"):
        list_psfhs(tmp_path / "bad")[0].load()
    _fake_psfhs(tmp_path / "nolabel", ["00001", "00002"])
    (tmp_path / "nolabel" / "label" / "00002.png").unlink()
    with pytest.raises(DataError, match="1 image.* have no label.*00002.png"):
        list_psfhs(tmp_path / "nolabel")


# --------------------------------------------------------------------------- grouping


def test_groups_are_id_blocks():
    groups = psfhs_groups(["03744", "03749", "03750", "03799", "03800", 3801])
    assert groups[0] == groups[1] != groups[2] == groups[3] != groups[4] == groups[5]
    assert psfhs_groups(["00010", "00019"], block_size=10, duplicate_pairs=()) == ["psfhs-00010", "psfhs-00010"]
    with pytest.raises(DataError, match="not a PSFHS image id"):
        psfhs_groups(["abc"])


def _check_split(ids):
    groups = psfhs_groups(ids)
    by_id = dict(zip(ids, groups))
    for a, b in DUPLICATE_PAIRS:
        if a in by_id and b in by_id:
            assert by_id[a] == by_id[b], (a, b)
    for seed in range(5):
        parts = train_val_test_split(groups, seed=seed)
        sides = [set(np.asarray(groups)[p].tolist()) for p in parts]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        side_of = {ids[i]: k for k, p in enumerate(parts) for i in p}
        for a, b in DUPLICATE_PAIRS:
            if a in side_of and b in side_of:
                assert side_of[a] == side_of[b], (seed, a, b)
    return groups


def test_duplicates_share_a_group_and_split_side():
    ids = [f"{i:05d}" for i in range(3744, 5102)]  # the full published id range
    _check_split(ids)
    # 04316/04398 straddle blocks 04300 and 04350: those blocks are merged.
    assert psfhs_groups(["04316", "04398", "04360"]) == ["psfhs-04300"] * 3


def test_docstring_examples():
    assert doctest.testmod(psfhs_module).failed == 0


# --------------------------------------------------------------------------- real data


def test_published_mha_equal_the_pngs():
    root = need_dataset("psfhs")
    mha_items = list_psfhs(root / "mha_as_distributed")
    assert len(mha_items) == 20
    for item in mha_items:
        planes, header = read_mha(item.image_path)
        assert planes.shape == (3, 256, 256) and planes.dtype == np.uint8
        assert header["spacing"] == (1.0, 1.0, 1.0)
        assert np.array_equal(planes[0], planes[1]) and np.array_equal(planes[0], planes[2])
        image, label = item.load()
        assert np.array_equal(image, read_psfhs_image(root / "image" / f"{item.image_id}.png"))
        assert np.array_equal(label, read_psfhs_image(root / "label" / f"{item.image_id}.png"))


def test_real_dataset_labels_and_split():
    root = need_dataset("psfhs")
    items = list_psfhs(root)
    assert len(items) > 1000
    for item in items[::8]:  # a sample keeps the test fast; all ids are checked by list_psfhs
        image, label = item.load()
        assert image.shape == label.shape == (256, 256)
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
    _check_split([i.image_id for i in items])


def test_psfhs_detection_set_alternates_or_derives_both_negatives(tmp_path):
    from fetalkit.detection.sources import psfhs_detection_set
    _fake_psfhs(tmp_path, ["00001", "00002"])
    alternate, pixels = psfhs_detection_set(tmp_path)
    assert [s.tags.get("derived") for s in alternate.samples] == [None, "nofh", None, "nops"]
    both, pixels = psfhs_detection_set(tmp_path, both_negatives=True)
    names = [s.file_name for s in both.samples]
    assert names == ["00001.png", "00001_nops.png", "00001_nofh.png",
                     "00002.png", "00002_nops.png", "00002_nofh.png"]
    assert set(pixels) == {n for n in names if "_no" in n}
    groups = {s.file_name[:5]: s.group for s in both.samples}
    assert all(s.group == groups[s.file_name[:5]] for s in both.samples)  # derived stay with their source
    assert all(0 not in s.labels for s in both.samples if s.tags.get("derived") == "nops")
