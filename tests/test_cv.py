"""Block cross-validation: folds by group, and a 2-fold run of `fetalkit train detector --cv` on a tiny phantom set."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fetalkit.datasets.splits import cv_folds, group_folds, select_split


def test_group_folds_keep_groups_whole_and_cover_every_item():
    groups = [f"g{i // 3}" for i in range(31)]  # 11 groups, the last of one item
    folds = group_folds(groups, 4, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(31))
    fold_groups = [{groups[i] for i in f} for f in folds]
    assert all(not (a & b) for i, a in enumerate(fold_groups) for b in fold_groups[i + 1:])
    assert max(map(len, fold_groups)) - min(map(len, fold_groups)) <= 1
    assert [f.tolist() for f in group_folds(groups, 4, seed=3)] == [f.tolist() for f in folds]  # seeded
    with pytest.raises(ValueError, match="fewer folds"):
        group_folds(groups, 12)
    with pytest.raises(ValueError, match="at least 2"):
        group_folds(groups, 1)


def test_cv_folds_leave_the_test_part_out():
    groups = [f"block{i // 5}" for i in range(200)]
    test = set(select_split(groups, "test", seed=0).tolist())
    pairs = cv_folds(groups, 5, seed=0)
    held = [set(h.tolist()) for _, h in pairs]
    dev = set(range(200)) - test
    assert set().union(*held) == dev and sum(map(len, held)) == len(dev)
    for train, h in pairs:
        assert not (set(train.tolist()) & test) and not (set(train.tolist()) & set(h.tolist()))
        assert set(train.tolist()) | set(h.tolist()) == dev
        assert not ({groups[i] for i in train} & {groups[i] for i in h})


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


def _cv_record(tmp_path, name, ap_symphysis, held=(180, 220), mosaic=0.0, split_seed=0):
    """A cv.json written by the CV report writer from given per-fold figures."""
    from fetalkit.training.cv import summarise_folds, write_cv_report
    rows = [{"fold": i, "n_train": 400 - n, "n_held_out": n, "ap_pubic_symphysis": ap, "ap_fetal_head": 0.8,
             "video_miss_rate_held": 0.01 * (i + 1)} for i, (n, ap) in enumerate(zip(held, ap_symphysis))]
    record = {"data": "coco", "recipe": {"train": {"arch": "fcos-mnv2", "mosaic": mosaic, "data_split_seed": split_seed},
                                         "cv": {"folds": len(rows)}}, "folds": rows, "summary": summarise_folds(rows)}
    write_cv_report(record, tmp_path / name)
    return tmp_path / name


def test_cv_compare_pairs_only_the_folds_both_records_hold(tmp_path):
    from fetalkit.errors import DataError
    from fetalkit.training.cv import paired_differences, read_cv_record
    base = read_cv_record(_cv_record(tmp_path, "base", [0.60, 0.50, 0.55], held=(180, 220, 200)))
    part = read_cv_record(_cv_record(tmp_path, "part", [0.70, 0.40, 0.65], held=(180, 220, 200)))
    part["folds"] = [part["folds"][0], part["folds"][2]]  # folds 0 and 2 of 3 scored so far
    d = paired_differences(base, part)["ap_pubic_symphysis"]
    assert d["folds"] == [0, 2] and d["diffs"] == pytest.approx([0.10, 0.10])
    from fetalkit.training.cv import summarise_folds, write_cv_report
    write_cv_report(part | {"summary": summarise_folds(part["folds"])}, tmp_path / "part")
    r = fetalkit("eval", "cv-compare", tmp_path / "base", tmp_path / "part")
    assert r.returncode == 0 and "paired over 2 folds (0, 2 of 3)" in r.stdout, r.stderr
    part["folds"] = [part["folds"][1]]
    part["folds"][0]["fold"] = 1  # the 200-scan fold under another number: not the same fold
    with pytest.raises(DataError, match="not over the same folds"):
        paired_differences(base, part)
    base["folds"] = base["folds"][:1]
    part["folds"][0] |= {"n_train": 180, "n_held_out": 220}
    with pytest.raises(DataError, match="no scored fold in common"):
        paired_differences(base, part)


def test_cv_compare_pairs_the_folds_and_names_what_changed(tmp_path):
    base = _cv_record(tmp_path, "base", [0.60, 0.50])
    other = _cv_record(tmp_path, "mosaic", [0.63, 0.48], mosaic=0.5)
    from fetalkit.training.cv import paired_differences, read_cv_record, recipe_changes
    d = paired_differences(read_cv_record(base), read_cv_record(other))
    assert d["ap_pubic_symphysis"]["diffs"] == pytest.approx([0.03, -0.02])
    assert d["ap_pubic_symphysis"]["mean"] == pytest.approx(0.005)
    assert d["ap_pubic_symphysis"]["sd"] == pytest.approx(np.std([0.03, -0.02], ddof=1))
    assert (d["ap_pubic_symphysis"]["higher"], d["ap_pubic_symphysis"]["lower"]) == (1, 1)
    assert d["ap_fetal_head"]["diffs"] == [0.0, 0.0] and d["ap_fetal_head"]["higher"] == 0
    assert "f1" not in d  # figures missing from the records are left out
    assert recipe_changes(read_cv_record(base), read_cv_record(other)) == {"mosaic": (0.0, 0.5)}
    older = read_cv_record(base)
    del older["recipe"]["train"]["mosaic"]  # a run scored before the option existed
    assert recipe_changes(older, read_cv_record(other)) == {"mosaic": ("(not recorded: its default)", 0.5)}
    # the CLI: a missing run and one over other folds are named, the good one still compared, exit 1
    shifted = _cv_record(tmp_path, "shifted", [0.7, 0.7], held=(200, 200))
    reseeded = _cv_record(tmp_path, "reseeded", [0.7, 0.7], split_seed=1)
    table = tmp_path / "paired.csv"
    r = fetalkit("eval", "cv-compare", base, tmp_path / "missing", other, shifted, reseeded, "--out", table)
    assert r.returncode == 1
    assert "missing: no cv.json" in r.stderr and r.stderr.count("not over the same folds") == 2
    assert "mosaic 0.0 -> 0.5" in r.stdout and "+0.0050 ± 0.0354   higher in 1 of 2" in r.stdout
    rows = [ln.split(",") for ln in table.read_text().splitlines()]
    assert rows[0][:4] == ["recipe", "figure", "mean_diff", "sd_diff"]
    assert {(row[0], row[1]) for row in rows[1:]} == {(str(other), k) for k in
                                                      ("ap_pubic_symphysis", "ap_fetal_head", "video_miss_rate_held")}
    r = fetalkit("eval", "cv-compare", tmp_path / "missing", other)
    assert r.returncode == 1 and "no cv.json" in r.stderr and "Traceback" not in r.stderr


def _fold_row(fold, n_held, ap):
    """One fold's figures as `train detector --cv` records them (the keys the summary prints)."""
    return {"fold": fold, "n_train": 600 - n_held, "n_held_out": n_held, "ap_pubic_symphysis": ap, "ap50_pubic_symphysis": 0.99,
            "ap_fetal_head": 0.8, "f1_pubic_symphysis": 0.99, "fppi_pubic_symphysis": 0.01, "video_sequences": 40,
            "video_miss_rate_detector": 0.03, "video_miss_rate_held": 0.01 * (fold + 1), "video_miss_reduction": 0.5}


def test_cv_merge_joins_folds_scored_in_separate_runs(tmp_path):
    from dataclasses import dataclass, asdict
    from fetalkit.training.cv import CvConfig, same_recipe, summarise_folds, write_cv_report

    @dataclass
    class Recipe:  # stands in for the training config: what same_recipe compares
        arch: str = "fcos-mnv2"
        epochs: int = 3
        mosaic: float = 0.0
        threads: int = 1
    recipe = {"train": asdict(Recipe()), "cv": asdict(CvConfig(folds=3))}
    two_threads = {**recipe, "train": asdict(Recipe(threads=2))}  # another machine: the same recipe

    def run(name, rows, recipe=recipe, fold_dirs=True):
        folder = tmp_path / name
        write_cv_report({"data": "coco", "recipe": recipe, "folds": rows, "complete": False,
                         "summary": summarise_folds(rows)}, folder)
        for row in rows if fold_dirs else []:  # as a CV run leaves them: fold.json beside the fold's models
            (folder / f"fold{row['fold']}").mkdir()
            (folder / f"fold{row['fold']}" / "fold.json").write_text(json.dumps({"recipe": recipe, "metrics": row}))
            (folder / f"fold{row['fold']}" / "detector.onnx").write_bytes(b"model %d" % row["fold"])
        return folder
    a = run("machine_a", [_fold_row(0, 180, 0.60), _fold_row(2, 200, 0.70)])
    b = run("machine_b", [_fold_row(1, 220, 0.50)], recipe=two_threads, fold_dirs=False) / "cv.json"  # only its record came back
    out = tmp_path / "merged"
    r = fetalkit("eval", "cv-merge", out, a, b)
    assert r.returncode == 0, r.stderr
    assert "3-fold block cross-validation of fcos-mnv2, 3 epochs" in r.stdout and "partial" not in r.stdout
    assert "ap_pubic_symphysis         0.6000 ± 0.1000   (0.6000, 0.5000, 0.7000)" in r.stdout
    record = json.loads((out / "cv.json").read_text())
    assert record["complete"] is True and [row["fold"] for row in record["folds"]] == [0, 1, 2]
    assert record["recipe"]["train"]["threads"] == [1, 2] and record["recipe"]["train"]["mosaic"] == 0.0
    assert record["summary"]["video_miss_rate_held"]["mean"] == pytest.approx(0.02)
    assert (out / "fold2" / "detector.onnx").read_bytes() == b"model 2"  # a fold's models come along
    rebuilt = json.loads((out / "fold1" / "fold.json").read_text())  # from the bare record: resumable there
    assert rebuilt["metrics"] == _fold_row(1, 220, 0.50) and rebuilt["recipe"]["train"]["threads"] == 2
    assert same_recipe(rebuilt["recipe"], recipe, Recipe)  # a one-thread rerun there keeps the fold
    assert not same_recipe(rebuilt["recipe"], {**recipe, "train": asdict(Recipe(mosaic=0.5))}, Recipe)
    assert [ln.split(",")[0] for ln in (out / "cv.csv").read_text().splitlines()[1:]] == ["0", "1", "2", "mean", "sd"]
    again = tmp_path / "again"  # a merged record merges again
    assert fetalkit("eval", "cv-merge", again, out, a).returncode == 0
    assert json.loads((again / "cv.json").read_text())["recipe"]["train"]["threads"] == [1, 2]
    # a partial merge says so; merging into one of the runs works in place
    r = fetalkit("eval", "cv-merge", a, a)
    assert r.returncode == 0 and "partial: folds 0, 2 of 3" in r.stdout and "2 of 3 folds of" in r.stdout
    # refused, nothing written: another recipe; a fold over other scans; one fold with two sets of figures
    refused = tmp_path / "refused"
    mosaic = run("mosaic", [_fold_row(1, 220, 0.55)], recipe={**recipe, "train": asdict(Recipe(mosaic=0.5))})
    shifted = run("shifted", [_fold_row(1, 200, 0.50)])
    twice = run("twice", [_fold_row(2, 200, 0.65)])
    for other, message in ((mosaic, "another recipe than"), (shifted, "fold 1 holds other scans"),
                           (twice, "fold 2 was also scored in")):
        r = fetalkit("eval", "cv-merge", refused, a, b, other)
        assert r.returncode == 1 and message in r.stderr and str(other) in r.stderr and "Traceback" not in r.stderr
        assert not refused.exists()
    r = fetalkit("eval", "cv-merge", twice, a)  # a folder holding another CV, not named among the runs
    assert r.returncode == 1 and "already holds a cross-validation" in r.stderr
    assert json.loads((twice / "fold2" / "fold.json").read_text())["metrics"]["ap_pubic_symphysis"] == 0.65
    r = fetalkit("eval", "cv-merge", refused, a, tmp_path / "missing")
    assert r.returncode == 1 and "missing: no cv.json" in r.stderr and not refused.exists()


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    """16 small phantom head scans (the head box from the phantom's own mask) in 8 groups,
    with every 4th scan's head blanked out as a negative."""
    from fetalkit.detection.boxes import DetSample, DetSet
    from fetalkit.detection.formats import write_detection_set
    from fetalkit.io.images import write_image
    from fetalkit.synth.phantom import head_phantom
    root = tmp_path_factory.mktemp("cvset")
    samples = []
    for i in range(16):
        p = head_phantom(seed=i, shape_hw=(96, 128))
        ys, xs = np.nonzero(p.mask)
        image, boxes = p.image.copy(), np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        if i % 4 == 3:
            image[p.mask > 0] = 0
            boxes = np.zeros((0, 4), np.float32)
        path = write_image(root / "src" / f"p{i:02d}.png", image)
        samples.append(DetSample(f"p{i:02d}.png", path, 128, 96, boxes, np.ones(len(boxes), np.int64), group=f"g{i // 2}"))
    return write_detection_set(DetSet(["pubic_symphysis", "fetal_head"], samples), root / "coco", "coco")


def test_two_fold_cross_validation_on_phantom_scans(phantom_set, tmp_path):
    out = tmp_path / "cv"
    args = ("train", "detector", "--data", phantom_set, "--out", out, "--cv", "2", "--epochs", "1", "--batch-size", "4",
            "--size", "128", "--from-checkpoint", "psfhs-fcos-mnv2", "--lr", "1e-4", "--cv-category", "fetal_head",
            "--cv-sequences", "2", "--cv-conf", "0.25")  # from the bundled weights: one epoch finds phantom heads
    r = fetalkit(*args)
    assert r.returncode == 0, r.stderr + r.stdout
    record = json.loads((out / "cv.json").read_text())
    rows = record["folds"]
    assert [row["fold"] for row in rows] == [0, 1]
    # the held-out parts of the two folds: disjoint, whole groups, together the development part (test left out)
    from fetalkit.detection.formats import read_detection_set
    ds = read_detection_set(phantom_set)
    test = {ds.samples[i].file_name for i in select_split(ds.groups(), "test", 0)}
    held = []
    for f in (0, 1):
        lines = [ln.split(",") for ln in (out / f"fold{f}" / "split.txt").read_text().splitlines()]
        assert not test & {name for name, _ in lines}
        held.append({name for name, part in lines if part == "val"})
        assert (out / f"fold{f}" / "detector.onnx").is_file() and (out / f"fold{f}" / "last.pt").is_file()
    assert not held[0] & held[1]
    assert held[0] | held[1] == {s.file_name for s in ds.samples} - test
    assert [row["n_held_out"] for row in rows] == [len(h) for h in held]
    # the figures: in range, the hold rule never shows more target frames than the detector alone
    for row in rows:
        assert 0.0 <= row["ap_fetal_head"] <= 1.0 and 0.0 <= row["fppi_fetal_head"]
        assert 0.0 <= row["video_miss_rate_held"] <= row["video_miss_rate_detector"] <= 1.0
        assert row["video_sequences"] == 2 and row["video_target_frames"] > 0
        if row["video_miss_rate_detector"]:
            assert row["video_miss_reduction"] == pytest.approx(
                1 - row["video_miss_rate_held"] / row["video_miss_rate_detector"])
    # the folds' detectors did learn the heads: some found, not every target frame missed
    assert record["summary"]["ap_fetal_head"]["mean"] > 0.05
    assert record["summary"]["video_miss_rate_detector"]["mean"] < 1.0
    for key in ("ap_fetal_head", "f1_fetal_head", "video_miss_rate_held"):
        values = [row[key] for row in rows]
        assert record["summary"][key]["mean"] == pytest.approx(np.mean(values))
        assert record["summary"][key]["sd"] == pytest.approx(np.std(values, ddof=1))
    table = (out / "cv.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in table[1:]] == ["0", "1", "mean", "sd"]
    # the doc table: a row per fold and the mean ± sd row, with the record's figures
    md = (out / "cv.md").read_text().splitlines()
    assert md[0].startswith("| fold | held-out images | pubic symphysis AP | fetal head AP | fetal head F1")
    assert [ln.split("|")[1].strip() for ln in md[2:]] == ["0", "1", "**mean ± sd**"]
    assert md[2].split("|")[4].strip() == f"{rows[0]['ap_fetal_head']:.3f}"
    head = record["summary"]["ap_fetal_head"]
    assert md[4].split("|")[4].strip() == f"**{head['mean']:.3f}** ± {head['sd']:.3f}"
    assert md[3].split("|")[-4].strip() == f"{100 * rows[1]['video_miss_rate_held']:.2f} %"
    assert "mean ± sd" in r.stdout
    # a rerun of the same recipe scores nothing again
    again = fetalkit(*args)
    assert again.returncode == 0 and again.stderr.count("already scored") == 2
    assert json.loads((out / "cv.json").read_text())["folds"] == rows
    # the record says how its folds ran, not how the latest command would have: a rerun on one
    # thread keeps both folds and still reads 2; a fold scored on 1 thread elsewhere makes it [1, 2]
    again = fetalkit(*args, "--threads", "1")
    assert again.returncode == 0 and again.stderr.count("already scored") == 2, again.stderr
    assert json.loads((out / "cv.json").read_text())["recipe"]["train"]["threads"] == 2
    fold1 = json.loads((out / "fold1" / "fold.json").read_text())
    fold1["recipe"]["train"]["threads"] = 1
    (out / "fold1" / "fold.json").write_text(json.dumps(fold1))
    again = fetalkit(*args)
    assert again.returncode == 0 and again.stderr.count("already scored") == 2, again.stderr
    assert json.loads((out / "cv.json").read_text())["recipe"]["train"]["threads"] == [1, 2]
    # the same fold models scored with flip averaging, in a copy: each fold resumes from its
    # finished last.pt, so nothing trains again; the figures are the flip-averaged detector's
    flipped = tmp_path / "cv_flip"
    for f in (0, 1):
        (flipped / f"fold{f}").mkdir(parents=True)
        shutil.copy(out / f"fold{f}" / "last.pt", flipped / f"fold{f}" / "last.pt")
    r = fetalkit(*[flipped if a == out else a for a in args], "--cv-flip")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "epoch" not in r.stderr and "flip-averaged" in r.stdout
    record = json.loads((flipped / "cv.json").read_text())
    assert record["recipe"]["cv"]["flip"] is True
    assert [row["n_held_out"] for row in record["folds"]] == [row["n_held_out"] for row in rows]
    assert all(0.0 <= row["ap_fetal_head"] <= 1.0 for row in record["folds"])
    assert record["summary"]["ap_fetal_head"]["mean"] > 0.05
    # the two scorings of the same folds, paired
    r = fetalkit("eval", "cv-compare", out, flipped)
    assert r.returncode == 0, r.stderr
    assert "cv_flip False -> True" in r.stdout and "paired over 2 folds" in r.stdout
    diff = record["folds"][0]["ap_fetal_head"] - rows[0]["ap_fetal_head"]
    assert f"{diff:+.4f}" in r.stdout.split("ap_fetal_head")[1].splitlines()[0]


def test_cross_validation_refuses_bad_fold_counts(phantom_set, tmp_path):
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", tmp_path / "a", "--cv", "1")
    assert r.returncode != 0 and "K >= 2" in r.stdout + r.stderr
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", tmp_path / "b", "--cv", "9", "--epochs", "1",
                 "--size", "128", "--init", "random")
    assert r.returncode != 0 and "fewer folds" in r.stdout + r.stderr and "Traceback" not in r.stderr
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", tmp_path / "c", "--cv", "2", "--epochs", "1",
                 "--size", "128", "--init", "random", "--cv-category", "nose")
    assert r.returncode != 0 and "--cv-category" in r.stdout + r.stderr


def test_cross_validation_distils_each_fold_from_its_own_folds_teachers(phantom_set, tmp_path):
    """--distill-from RUN/fold{fold}/last.pt (twice: an ensemble) under --cv: each fold learns from the
    teacher fold that held out the same images; a teacher that trained on them is refused."""
    from fetalkit.training.detect import load_detector_checkpoint
    common = ("--cv", "2", "--epochs", "1", "--batch-size", "4", "--size", "128", "--init", "random",
              "--cv-category", "fetal_head", "--cv-sequences", "1")
    teacher = tmp_path / "teacher"
    # trained in two goes (as a CV spread over sessions): fold 1 alone first, then the rest
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", teacher, *common, "--cv-only", "1")
    assert r.returncode == 0, r.stderr
    assert not (teacher / "fold0").exists() and "partial: fold 1 of 2" in r.stdout
    assert "1 of 2 folds of block cross-validation" in " ".join(r.stdout.split())
    partial = json.loads((teacher / "cv.json").read_text())
    assert [row["fold"] for row in partial["folds"]] == [1] and partial["complete"] is False
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", teacher, *common)
    assert r.returncode == 0, r.stderr
    assert "fold 1: already scored" in r.stderr and "partial" not in r.stdout
    whole = json.loads((teacher / "cv.json").read_text())
    assert [row["fold"] for row in whole["folds"]] == [0, 1] and whole["complete"] is True
    assert whole["folds"][1] == partial["folds"][0]
    for bad in ("2", "0,x"):
        r = fetalkit("train", "detector", "--data", phantom_set, "--out", tmp_path / "badfold", *common, "--cv-only", bad)
        assert r.returncode != 0 and "--cv-only" in r.stdout + r.stderr and not (tmp_path / "badfold").exists()
    path = str(teacher / "fold{fold}" / "last.pt")
    student = tmp_path / "student"
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", student, *common,
                 "--distill-from", path, "--distill-from", path)
    assert r.returncode == 0, r.stderr + r.stdout
    for f in (0, 1):
        cfg = load_detector_checkpoint(student / f"fold{f}" / "last.pt")[1]
        assert cfg.distill_from == [str(teacher / f"fold{f}" / "last.pt")] * 2
        header = (student / f"fold{f}" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert "train_distill_outputs" in header and "train_distill_features" not in header
    assert json.loads((student / "cv.json").read_text())["recipe"]["train"]["distill_from"] == [path, path]
    # a teacher that trained on fold 0's held-out images, and one with no split beside it, are refused
    leaky = tmp_path / "leaky" / "fold0"
    leaky.mkdir(parents=True)
    shutil.copy(teacher / "fold0" / "last.pt", leaky / "last.pt")
    names = [ln.split(",")[0] for ln in (teacher / "fold0" / "split.txt").read_text().splitlines()]
    (leaky / "split.txt").write_text("".join(f"{n},train\n" for n in names))
    shutil.copytree(teacher / "fold1", leaky.parent / "fold1")
    for bad, message in ((str(leaky.parent / "fold{fold}" / "last.pt"), "held-out part"),
                         ("psfhs-fcos-mnv2", "split.txt")):
        r = fetalkit("train", "detector", "--data", phantom_set, "--out", tmp_path / "refused", *common,
                     "--distill-from", bad)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "refused" / "fold0" / "last.pt").exists()
    r = fetalkit("train", "detector", "--data", phantom_set, "--out", tmp_path / "nocv", "--distill-from", path)
    assert r.returncode == 1 and "needs --cv" in r.stderr and not (tmp_path / "nocv").exists()
