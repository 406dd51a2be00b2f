"""Models that know their domain (fetalkit.runtime.domain): refusals in biometry, the masking gate,
the classifier's unknown, the anatomy classes of the public sets.

The bundled view classifier decides the domain; the synthetic inputs here (a drawn text page,
fetalkit's head phantom) are the cases every machine has.  The figures on real data (AUROC,
false accepts per source) are in docs/domain.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fetalkit.biometry.head_job import COLUMNS, HeadMeasurer, measure_files
from fetalkit.datasets.views import (LEFT_OUT, ViewItem, planes_db_class, read_view_image, split_view_items)
from fetalkit.errors import OutOfDomainError
from fetalkit.masking.pipeline import MaskConfig, Masker
from fetalkit.runtime.domain import MODEL_DOMAINS, DomainCheck, describe_domain
from fetalkit.runtime.registry import load_model
from fetalkit.synth.phantom import head_phantom
from fetalkit.types import ImageDetections


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


def text_page(seed: int = 0) -> np.ndarray:
    """A page of printed text: nothing like an ultrasound scan."""
    rng = np.random.default_rng(seed)
    page = np.full((480, 640), 235, np.uint8)
    for k in range(14):
        words = " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9)))
                         for _ in range(6))
        cv2.putText(page, words, (20, 40 + 31 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 30, 2, cv2.LINE_AA)
    return page


@pytest.fixture(scope="module")
def head_check():
    check = DomainCheck.of(load_model(None, "head-seg"))
    assert check is not None, "the bundled head model's card names its domain"
    return check


def test_every_bundled_model_names_its_domain():
    from fetalkit.runtime.registry import bundled_cards
    for card in bundled_cards():
        if card["task"] in MODEL_DOMAINS:
            domain = card.get("domain")
            assert domain and 0 < domain["threshold"] < 1, card["name"]
            assert tuple(domain["classes"]) == MODEL_DOMAINS[card["task"]], card["name"]
            assert domain["test"]["auroc"] is not None, card["name"]


def test_phantom_heads_pass_and_a_text_page_does_not(head_check):
    heads = [head_phantom(seed).image for seed in (101, 202, 303)]  # seeds the classifier never saw
    assert all(v.ok for v in map(head_check.judge, heads))
    page = head_check.judge(text_page())
    assert not page.ok and page.score < head_check.threshold
    aop = DomainCheck.of(load_model(None, "psfhs-seg"))
    assert not any(aop.judge(im).ok for im in heads + [text_page()])
    assert describe_domain(head_check.classes).startswith("fetal head planes")


def test_biometry_refuses_what_is_not_a_head_plane_and_force_measures_it(tmp_path):
    cv2.imwrite(str(tmp_path / "page.png"), text_page())
    cv2.imwrite(str(tmp_path / "head.png"), head_phantom(404).image)
    res = fetalkit("biometry", "head", tmp_path / "page.png", tmp_path / "head.png", "--out", tmp_path / "out",
                   "--pixel-mm", "0.15", "--json")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    rows = {Path(r["filename"]).name: r for r in json.loads(res.stdout)}
    page, head = rows["page.png"], rows["head.png"]
    assert page["hc_mm"] == "" and page["plane_ok"] == "false" and float(page["plane_score"]) < 0.5
    assert "page.png: not a fetal head plane (score" in page["error"] and "--force measures anyway" in page["error"]
    assert head["plane_ok"] == "true" and float(head["hc_mm"]) > 0 and head["error"] == ""
    assert not (tmp_path / "out" / "page_overlay.png").exists() and (tmp_path / "out" / "head_overlay.png").exists()
    csv_header = (tmp_path / "out" / "measurements.csv").read_text().splitlines()[0].split(",")
    assert csv_header == COLUMNS
    forced = fetalkit("biometry", "head", tmp_path / "page.png", "--out", tmp_path / "forced", "--pixel-mm", "0.15",
                      "--force", "--json")
    row = json.loads(forced.stdout)[0]
    assert row["plane_ok"] == "false" and (row["hc_mm"] != "" or row["error"]), row  # measured (or no head found)
    assert "not a fetal head plane" not in row["error"]


def test_aop_refuses_a_head_phantom(tmp_path):
    cv2.imwrite(str(tmp_path / "head.png"), head_phantom(505).image)
    res = fetalkit("biometry", "aop", tmp_path / "head.png", "--out", tmp_path / "out", "--json")
    row = json.loads(res.stdout)[0]
    assert res.returncode == 1 and row["plane_ok"] == "false" and row["aop_deg"] == ""
    assert "not an intrapartum transperineal scan" in row["error"] and "--force" in row["error"]
    assert not (tmp_path / "out" / "masks" / "head.png").exists()


def test_one_measurer_for_cli_batch_and_web(tmp_path):
    from fetalkit.batch import BatchOptions, run_batch
    from fetalkit.web.services import Models, measure_head
    from fetalkit.web.upload import Upload
    src = tmp_path / "archive"
    src.mkdir()
    cv2.imwrite(str(src / "page.png"), text_page(1))
    measurer = HeadMeasurer()
    with pytest.raises(OutOfDomainError) as err:
        measurer.measure(src / "page.png", text_page(1), 0.15)
    assert err.value.fields["plane_ok"] == "false"
    cli = measure_files([src / "page.png"], tmp_path / "cli", pixel_mm=0.15, model=measurer)[0]
    run_batch("biometry-head", src, tmp_path / "batch", BatchOptions(pixel_mm=0.15))
    manifest = (tmp_path / "batch" / "manifest.csv").read_text()
    assert "not a fetal head plane" in manifest and cli["error"].split(": ", 1)[1] in manifest
    upload = Upload(path=src / "page.png", name="page.png", fields={})
    web = measure_head(Models(), upload, tmp_path / "web", 0.15)
    assert web["refused"] and web["overlay"].startswith("data:image/png") and "not a fetal head plane" in web["error"]


class ScriptedDetector:
    classes = ["pubic_symphysis", "fetal_head"]

    def detect(self, gray, conf=None, iou=None):
        return ImageDetections(np.array([[20, 30, 50, 60]], np.float32), np.array([0.9], np.float32), np.array([1]))


class FixedDomain:
    threshold = 0.5
    made_for = "intrapartum transperineal scans"

    def __init__(self, score):
        self.score, self.calls = score, 0

    def scores(self, images):
        self.calls += 1
        return np.full(len(images), self.score)


def test_masking_passes_frames_outside_the_domain_and_says_so():
    frame = np.full((100, 100), 120, np.uint8)
    outside = FixedDomain(0.1)
    m = Masker(ScriptedDetector(), MaskConfig(margin=0), domain=outside)
    steps = [m.step(i, frame) for i in range(10)]
    assert all(s.record["masks"] == [] and s.record["outside_domain"] for s in steps)
    assert all(s.record["domain"] == 0.1 for s in steps) and (steps[0].frame == frame).all()
    assert outside.calls == 10, "every frame is checked"
    assert "10 of 10 frames are outside the detector's domain" in m.domain_warning(10)
    forced = Masker(ScriptedDetector(), MaskConfig(margin=0, outside_domain="mask"), domain=FixedDomain(0.1))
    assert forced.step(0, frame).record["masks"] == [[20, 30, 30, 30]]
    inside = Masker(ScriptedDetector(), MaskConfig(margin=0), domain=FixedDomain(0.9))
    step = inside.step(0, frame)
    assert step.record["masks"] == [[20, 30, 30, 30]] and "outside_domain" not in step.record
    assert inside.domain_warning(1) is None
    with pytest.raises(Exception, match="--outside-domain"):
        Masker(ScriptedDetector(), MaskConfig(outside_domain="maybe"))


class ScriptedDomain(FixedDomain):
    def __init__(self, scores):
        super().__init__(0.0)
        self.queue = list(scores)

    def scores(self, images):
        return np.array([self.queue.pop(0) for _ in images])


def test_the_domain_is_entered_at_once_and_left_only_by_most_recent_frames():
    """A blurred or dark frame inside a scan is still masked; a cut into the domain is masked at once."""
    frame = np.full((100, 100), 120, np.uint8)
    scores = [0.9] * 6 + [0.1, 0.1] + [0.9] * 2 + [0.1] * 20 + [0.9]
    m = Masker(ScriptedDetector(), MaskConfig(margin=0, domain_window=15), domain=ScriptedDomain(scores))
    masked = [bool(m.step(i, frame).record["masks"]) for i in range(len(scores))]
    assert all(masked[:10]), "two low frames inside the scan are masked"
    assert not any(masked[18:30]) and masked[10], "a real cut out is passed once most recent frames are out"
    assert masked[30], "a frame back in the domain is masked at once"


def test_no_class_chosen_hides_nothing():
    from fetalkit.web.services import mask_config
    frame = np.full((100, 100), 120, np.uint8)
    assert Masker(ScriptedDetector(), MaskConfig(classes=[])).step(0, frame).record["masks"] == []
    assert mask_config("", None, ScriptedDetector.classes).classes == []
    assert mask_config(None, None, ScriptedDetector.classes).classes is None


def test_anatomy_classes_of_the_public_sets():
    assert planes_db_class("Fetal brain", "Trans-thalamic") == "fetal_head"
    assert planes_db_class("Fetal brain", "Trans-cerebellum") == "other_fetal_plane"
    assert planes_db_class("Fetal thorax", "Not A Brain") == "fetal_heart"
    assert planes_db_class("Fetal femur", "Not A Brain") == "other_fetal_plane"
    items = [ViewItem(Path(f"a{i}"), "fetal_head", f"g{i}", origin="one") for i in range(20)]
    left = [ViewItem(Path(f"b{i}"), "fetal_head", f"h{i}", origin="two" + LEFT_OUT) for i in range(5)]
    sources = [items + left]
    assert not any(it.origin.endswith(LEFT_OUT) for part in ("train", "val") for it in split_view_items(sources, part))
    assert sum(it.origin.endswith(LEFT_OUT) for it in split_view_items(sources, "test")) == 5
    phantom = ViewItem(Path("phantom-3"), "fetal_head", "phantom-3", phantom_seed=3, origin="phantom")
    assert np.array_equal(read_view_image(phantom), head_phantom(3).image)


def test_split_file_keeps_phantoms(tmp_path):
    from fetalkit.training.view import _frame_field, split_items
    phantom = ViewItem(Path("phantom-3"), "fetal_head", "phantom-3", phantom_seed=3)
    clip = ViewItem(Path("clip.avi"), "fetal_heart", "c0", frame=7)
    blanked = ViewItem(Path("psfhs/image/03744.png"), "intrapartum_transperineal", "b0", derive="nops")
    (tmp_path / "split.txt").write_text("".join(f"{it.source}#{_frame_field(it)},{it.label},{it.group},train\n"
                                                for it in (phantom, clip, blanked)))
    back = split_items(tmp_path, "train")
    assert back[0].phantom_seed == 3 and back[1].frame == 7 and back[1].phantom_seed is None
    assert back[2].derive == "nops" and back[2].frame is None
