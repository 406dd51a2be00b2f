"""Distillation between dense detectors: the losses vanish where student and teacher agree, grow where
they differ, train only the student, and refuse detectors whose FPN shapes differ."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from fetalkit.errors import ModelError  # noqa: E402
from fetalkit.training.detectors import build_detector  # noqa: E402
from fetalkit.training.distill import (Distiller, binary_kl, dense_output_loss,  # noqa: E402
                                       feature_imitation_loss)


def _images(n: int = 2, size: int = 128):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, size, size, generator=g) for _ in range(n)]


def test_losses_are_zero_for_a_copy_and_grow_with_a_change():
    teacher = build_detector("fcos-mnv2", 2, 128, "random").eval()
    student = copy.deepcopy(teacher).eval()
    with Distiller(student, teacher) as d, torch.no_grad():
        student(_images())
        same = d.losses()
    assert float(same["distill_features"]) == pytest.approx(0.0, abs=1e-7)
    assert float(same["distill_outputs"]) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # another class layer: the outputs differ, the FPN features do not
        student.head.classification_head.cls_logits.weight.add_(0.5)
    with Distiller(student, teacher, weight=2.0) as d, torch.no_grad():
        student(_images())
        changed = d.losses()
    assert float(changed["distill_features"]) == pytest.approx(0.0, abs=1e-7)
    assert float(changed["distill_outputs"]) > 1e-3


def test_feature_imitation_is_scale_free_and_one_for_a_zero_student():
    t = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8)]
    assert float(feature_imitation_loss([torch.zeros_like(x) for x in t], t)) == pytest.approx(1.0)
    assert float(feature_imitation_loss([0.5 * x for x in t], t)) == pytest.approx(0.25)
    assert float(feature_imitation_loss([10 * x for x in t], [10 * x for x in t])) == 0.0


def test_binary_kl_is_nonnegative_and_zero_only_where_equal():
    t = torch.linspace(-6, 6, 25)
    assert torch.all(binary_kl(t, t).abs() < 1e-6)
    s = t + torch.linspace(-1, 1, 25)
    kl = binary_kl(s, t)
    assert torch.all(kl >= -1e-7) and float(kl.sum()) > 0


def test_output_loss_weighs_places_the_teacher_sees_an_object():
    """A box error where the teacher is sure of an object counts; the same error on background does not."""
    places = 10
    cls = torch.full((1, places, 2), -8.0)
    cls[0, 3, 1] = 8.0                                   # the teacher sees an object at place 3 only
    teacher = {"cls_logits": cls, "bbox_regression": torch.zeros(1, places, 4),
               "bbox_ctrness": torch.zeros(1, places, 1)}
    off_object = {**teacher, "bbox_regression": teacher["bbox_regression"].clone()}
    off_object["bbox_regression"][0, 7] = 3.0
    on_object = {**teacher, "bbox_regression": teacher["bbox_regression"].clone()}
    on_object["bbox_regression"][0, 3] = 3.0
    assert float(dense_output_loss(off_object, teacher)) < 0.01
    assert float(dense_output_loss(on_object, teacher)) == pytest.approx(12.0, rel=5e-3)


def test_only_the_student_learns():
    teacher = build_detector("fcos-mnv2", 2, 128, "random")
    student = build_detector("fcos-mnv2", 2, 128, "random").train()
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([1])}] * 2
    with Distiller(student, teacher) as d:
        losses = student(_images(), targets)
        losses |= d.losses()
        sum(losses.values()).backward()
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert student.backbone.body["0"][0].weight.grad is not None
    assert not student.backbone._forward_hooks and not student.head._forward_hooks  # removed on exit


def test_detectors_of_other_fpn_shapes_are_refused():
    student = build_detector("fcos-mnv2", 2, 128, "random").eval()
    teacher = build_detector("retinanet-mnv2", 2, 128, "random")     # a 64-channel FPN
    with Distiller(student, teacher) as d:
        student(_images(1))
        with pytest.raises(ModelError, match="FPN"):
            d.losses()
    with pytest.raises(ModelError, match="forward"):
        Distiller(student, teacher).losses()


def test_an_ensemble_teaches_its_averaged_outputs_and_no_features():
    from fetalkit.training.distill import EnsembleTeacher, average_dense_outputs
    a = build_detector("fcos-mnv2", 2, 128, "random").eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.head.classification_head.cls_logits.bias.add_(1.0)
    student = copy.deepcopy(a).eval()
    with Distiller(student, EnsembleTeacher([a, copy.deepcopy(a)])) as d, torch.no_grad():
        student(_images())
        same = d.losses()
    assert set(same) == {"distill_outputs"}  # separately trained FPNs are not comparable: no feature term
    assert float(same["distill_outputs"]) == pytest.approx(0.0, abs=1e-4)
    with Distiller(student, EnsembleTeacher([a, b])) as d, torch.no_grad():
        student(_images())
        assert float(d.losses()["distill_outputs"]) > 1e-3
    # probabilities are averaged, box regressions are averaged as they are
    heads = [{"cls_logits": torch.tensor([[[0.0]]]), "bbox_regression": torch.ones(1, 1, 4)},
             {"cls_logits": torch.tensor([[[torch.logit(torch.tensor(0.9))]]]), "bbox_regression": 3 * torch.ones(1, 1, 4)}]
    mean = average_dense_outputs(heads)
    assert float(torch.sigmoid(mean["cls_logits"])) == pytest.approx(0.7)
    assert torch.equal(mean["bbox_regression"], 2 * torch.ones(1, 1, 4))
    with pytest.raises(ModelError, match="differ"):
        average_dense_outputs([heads[0], {**heads[1], "cls_logits": torch.zeros(1, 1, 3)}])
    with pytest.raises(ModelError, match="at least two"):
        EnsembleTeacher([a])
