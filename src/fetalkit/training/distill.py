"""Knowledge distillation between two dense detectors of the same layout (FCOS / RetinaNet).

A pruned detector keeps its FPN and head (``compress.detector_ignored_layers``), so its
FPN features and dense outputs have the shapes of the unpruned network's: the unpruned
teacher can say, at every place of every level, what the student should compute.  The
student then learns from the teacher's whole response, not only from the few positive
places of the labelled boxes, which is what recovers a pruned network.

``Distiller`` hooks the student's backbone and head; after each training forward it runs
the frozen teacher on the same (augmented, normalised) batch and returns:

* ``distill_features``: per FPN level, the mean squared difference divided by the
  teacher's mean square (scale-free; the average over levels);
* ``distill_outputs``: soft targets on the dense outputs, normalised by how much the teacher
  sees objects (the sum over places of its highest class probability), as FCOS normalises
  its own losses by the number of positive places: the KL divergence of the class
  probabilities at every place, and, weighted by that probability, the L1 of the box
  regression and the KL of the centre-ness (FCOS).

Both are multiplied by ``weight`` and added to the detector's own losses by
``train_one_epoch``.

An ``EnsembleTeacher`` (several trained detectors of one layout, e.g. the same recipe from
other seeds) teaches through its averaged dense outputs only: the FPN features of separately
trained networks are not comparable, so there is no feature term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fetalkit.errors import ModelError


def feature_imitation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over levels of mean((s - t)^2) / mean(t^2): 0 when equal, 1 for an all-zero student."""
    if len(student) != len(teacher) or any(s.shape != t.shape for s, t in zip(student, teacher)):
        raise ModelError("student and teacher FPN features differ in shape; distil between detectors whose FPN "
                         "and head are alike (prune the trunk only)")
    terms = [(s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-6) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL divergence of Bernoulli(sigmoid(teacher)) from Bernoulli(sigmoid(student)):
    the cross-entropy against the teacher's probabilities less its entropy, so 0 where they agree."""
    p = torch.sigmoid(teacher_logits)
    return (F.binary_cross_entropy_with_logits(student_logits, p, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="none"))


def dense_output_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Soft-target loss on a dense detector's head outputs (N x places x K tensors): the class KL
    summed over places, box regression L1 and centre-ness KL weighted per place by the teacher's
    highest class probability; all normalised by the sum of those weights."""
    if set(student) != set(teacher) or any(student[k].shape != teacher[k].shape for k in teacher):
        raise ModelError("student and teacher head outputs differ (classes or places); distil a detector of the "
                         "same classes and levels")
    weight = torch.sigmoid(teacher["cls_logits"]).max(dim=-1).values   # N x places
    norm = weight.sum().clamp_min(1.0)
    loss = binary_kl(student["cls_logits"], teacher["cls_logits"]).sum() / norm
    l1 = F.l1_loss(student["bbox_regression"], teacher["bbox_regression"], reduction="none").sum(-1)
    loss = loss + (l1 * weight).sum() / norm
    if "bbox_ctrness" in teacher:
        ctr = binary_kl(student["bbox_ctrness"].squeeze(-1), teacher["bbox_ctrness"].squeeze(-1))
        loss = loss + (ctr * weight).sum() / norm
    return loss


class EnsembleTeacher(nn.Module):
    """Trained detectors of one layout teaching as one (see ``average_dense_outputs``)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ModelError("an ensemble teacher needs at least two detectors")
        for m in members:
            if not hasattr(m, "backbone") or not hasattr(m, "head"):
                raise ModelError("an ensemble teacher's members must be single-stage detectors with a backbone and head")
        self.members = nn.ModuleList(members)


def average_dense_outputs(heads: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The ensemble of several detectors' head outputs: class and centre-ness probabilities averaged
    (returned as logits), box regressions averaged."""
    keys = set(heads[0])
    if any(set(h) != keys or any(h[k].shape != heads[0][k].shape for k in keys) for h in heads):
        raise ModelError("the ensemble's detectors differ in classes or levels; ensemble detectors of one recipe")
    out = {}
    for k in keys:
        stacked = torch.stack([h[k] for h in heads])
        out[k] = stacked.mean(0) if k == "bbox_regression" else torch.logit(torch.sigmoid(stacked).mean(0), eps=1e-6)
    return out


def teacher_signals(teacher: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor] | None, dict]:
    """A teacher's FPN features (None for an ensemble) and dense outputs for a normalised batch."""
    if isinstance(teacher, EnsembleTeacher):
        return None, average_dense_outputs([m.head(list(m.backbone(images).values())) for m in teacher.members])
    features = list(teacher.backbone(images).values())
    return features, teacher.head(features)


def check_distillable(student: nn.Module, teacher: nn.Module, size: int) -> None:
    """Raise ``ModelError`` unless ``teacher`` can teach ``student`` (same FPN levels and head shapes),
    found with one forward pass of a blank ``size`` x ``size`` image through both."""
    student_mode = student.training
    with Distiller(student.eval(), teacher) as distiller, torch.no_grad():
        student([torch.zeros(1, size, size)])
        distiller.losses()
    student.train(student_mode)


class Distiller:
    """The frozen ``teacher``'s signals for ``student`` (see the module text); ``weight`` scales them.

    Use as a context manager around training so the hooks are removed afterwards::

        with Distiller(student, teacher, weight=1.0) as distiller:
            losses = student(images, targets)
            losses |= distiller.losses()
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float = 1.0):
        for name in ("backbone", "head"):
            if not hasattr(student, name) or not (hasattr(teacher, name) or isinstance(teacher, EnsembleTeacher)):
                raise ModelError(f"distillation needs two single-stage detectors with a {name}")
        self.student, self.teacher, self.weight = student, teacher.eval(), weight
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._seen: dict = {}
        self._hooks = [student.backbone.register_forward_hook(self._keep_backbone),
                       student.head.register_forward_hook(self._keep_head)]

    def _keep_backbone(self, module, inputs, output) -> None:
        self._seen["input"], self._seen["features"] = inputs[0], list(output.values())

    def _keep_head(self, module, inputs, output) -> None:
        self._seen["head"] = output

    def losses(self) -> dict[str, torch.Tensor]:
        """The weighted distillation losses of the student's last forward pass."""
        if "head" not in self._seen:
            raise ModelError("no student forward pass to distil: call the student first")
        seen, self._seen = self._seen, {}
        with torch.no_grad():
            t_features, t_head = teacher_signals(self.teacher, seen["input"])
        losses = {}
        if t_features is not None:  # first: unlike FPNs are the plainer message
            losses["distill_features"] = self.weight * feature_imitation_loss(seen["features"], t_features)
        return losses | {"distill_outputs": self.weight * dense_output_loss(seen["head"], t_head)}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
