"""Detector builders: one registry of torchvision detection architectures (BSD), built with
``weights=None`` and a MobileNetV2 + FPN backbone initialised from the offline ImageNet weights.

Every architecture exports to ONNX in one layout (see :class:`DenseDetectorExport`):
a gray ``B x 1 x S x S`` image in 0..1 in, ``boxes B x N x 4`` (x1, y1, x2, y2 in input
pixels) and ``scores B x N x C`` out; thresholds and NMS run in the runtime, so the
operating point can change without a new export.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from fetalkit.errors import ModelError
from fetalkit.runtime.preprocess import GRAY_MEAN, GRAY_STD
from fetalkit.training.models import offline_imagenet_weights

# MobileNetV2 feature stages (torchvision ``features`` index -> channels) at strides 8, 16, 32.
_MNV2_STAGES = {"6": 32, "13": 96, "17": 320}


def mobilenet_v2_fpn(fpn_channels: int, extra_blocks: nn.Module, init: str = "imagenet",
                     last_stride: int = 32) -> BackboneWithFPN:
    """Gray-input MobileNetV2 trunk up to ``last_stride`` (16 or 32) with an FPN of ``fpn_channels``.

    ImageNet init sums the RGB filters of the first convolution into one gray filter.
    Stopping at stride 16 drops the 160/320-channel stages: FCOS then gets P5 and P6
    from strided convolutions on P4, which keeps a 256 px model near 6 ms on 2 cores.
    """
    stages = dict(list(_MNV2_STAGES.items())[: 2 if last_stride == 16 else 3])
    depth = int(list(stages)[-1]) + 1
    trunk = mobilenet_v2(weights=None).features[:depth]
    first = trunk[0][0]
    trunk[0][0] = nn.Conv2d(1, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
    if init == "imagenet":
        state = {k[len("features."):]: v for k, v in offline_imagenet_weights("mobilenet_v2").items()
                 if k.startswith("features.") and int(k.split(".")[1]) < depth}
        state["0.0.weight"] = state["0.0.weight"].sum(dim=1, keepdim=True)
        trunk.load_state_dict(state, strict=True)
    elif init != "random":
        raise ModelError(f"unknown init {init!r}; use imagenet or random")
    return BackboneWithFPN(trunk, {k: str(i) for i, k in enumerate(stages)}, list(stages.values()), fpn_channels,
                           extra_blocks=extra_blocks)


def _transform_kwargs(size: int) -> dict:
    # Inputs arrive letterboxed to size x size, so torchvision's internal resize is a no-op.
    return dict(min_size=size, max_size=size, image_mean=[GRAY_MEAN], image_std=[GRAY_STD])


def _fcos(num_classes: int, size: int, init: str, channels: int = 32, last_stride: int = 16) -> nn.Module:
    # Levels at strides 8, 16, 32, 64 either way: to stride 16 the trunk gives P3-P4 and strided
    # convolutions on P4 give P5-P6; to stride 32 it gives P3-P5 and a max-pool gives P6.
    # FCOS sends an object to the level whose range (4..8 x the level's size) holds its
    # largest centre-to-edge distance.
    extra = LastLevelP6P7(channels, channels) if last_stride == 16 else LastLevelMaxPool()
    backbone = mobilenet_v2_fpn(channels, extra, init, last_stride=last_stride)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
    head = FCOSHead(channels, num_anchors=1, num_classes=num_classes + 1, num_convs=2)
    return FCOS(backbone, num_classes + 1, anchor_generator=anchors, head=head, score_thresh=0.01, nms_thresh=0.6,
                detections_per_img=50, topk_candidates=200, **_transform_kwargs(size))


class _LevelNormTower(nn.Module):
    """``num_convs`` 3x3 convolutions shared by all FPN levels, each followed by a
    BatchNorm of its own per level (as in EfficientDet: level statistics differ).

    Unlike torchvision's GroupNorm head (32 groups on 32 channels is a per-image
    instance norm), every output depends only on its receptive field, so padding a
    frame less or more changes nothing away from the padding; at export the norms
    fold into the convolutions and the whole head can run in INT8.
    """

    def __init__(self, channels: int, num_convs: int, num_levels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(num_convs))
        self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_convs))
                                   for _ in range(num_levels))
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms[level]):
            x = torch.relu(norm(conv(x)))
        return x


def _per_level(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """(N, A * K, H, W) -> (N, HWA, K), torchvision's order."""
    n, _, h, w = x.shape
    return x.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class _LevelNormClassificationHead(FCOSClassificationHead):
    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_convs: int, num_levels: int):
        super().__init__(channels, num_anchors, num_classes, 0)  # no torchvision tower: ours below
        self.tower = _LevelNormTower(channels, num_convs, num_levels)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_per_level(self.cls_logits(self.tower(f, i)), self.num_classes) for i, f in enumerate(x)], 1)


class _LevelNormRegressionHead(FCOSRegressionHead):
    def __init__(self, channels: int, num_anchors: int, num_convs: int, num_levels: int):
        super().__init__(channels, num_anchors, 0)
        self.tower = _LevelNormTower(channels, num_convs, num_levels)

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [self.tower(f, i) for i, f in enumerate(x)]
        reg = [_per_level(torch.relu(self.bbox_reg(f)), 4) for f in feats]
        ctr = [_per_level(self.bbox_ctrness(f), 1) for f in feats]
        return torch.cat(reg, 1), torch.cat(ctr, 1)


def _fcos_bn(num_classes: int, size: int, init: str) -> nn.Module:
    """``_fcos`` with a per-level BatchNorm head instead of torchvision's GroupNorm head."""
    model = _fcos(num_classes, size, init)
    head = model.head
    head.classification_head = _LevelNormClassificationHead(32, 1, num_classes + 1, num_convs=2, num_levels=4)
    head.regression_head = _LevelNormRegressionHead(32, 1, num_convs=2, num_levels=4)
    return model


def _gn_tower_as_level_norms(state: dict[str, torch.Tensor], num_levels: int = 4) -> dict[str, torch.Tensor]:
    """A GroupNorm head's towers renamed for ``_LevelNormTower``: the convolutions as they
    are (their bias is dropped: a BatchNorm follows), each GroupNorm's scale and shift
    copied into every level's BatchNorm, whose statistics are then learnt in fine-tuning."""
    out = {}
    for tower in ("classification_head", "regression_head"):
        prefix = f"head.{tower}.conv."
        convs = sorted(int(k[len(prefix):].split(".")[0]) for k, v in state.items()
                       if k.startswith(prefix) and k.endswith(".weight") and v.ndim == 4)
        for i, layer in enumerate(convs):  # torchvision's tower: conv, GroupNorm, ReLU per step
            out[f"head.{tower}.tower.convs.{i}.weight"] = state[f"{prefix}{layer}.weight"]
            for level in range(num_levels):
                for name in ("weight", "bias"):
                    out[f"head.{tower}.tower.norms.{level}.{i}.{name}"] = state[f"{prefix}{layer + 1}.{name}"]
    return out


def warm_start(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a trained detector's weights into ``model`` wherever names and shapes agree (a
    GroupNorm head is carried over into a per-level BatchNorm head); returns the names of
    ``model``'s tensors left as initialised."""
    own = model.state_dict()
    if any(k.startswith("head.classification_head.tower.") for k in own):
        state = {**state, **_gn_tower_as_level_norms(state)}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in matched):
        raise ModelError("the checkpoint shares no backbone weights with this architecture")
    model.load_state_dict(matched, strict=False)
    return sorted(k for k in own if k not in matched and not k.endswith("num_batches_tracked"))


def _retinanet(num_classes: int, size: int, init: str) -> nn.Module:
    backbone = mobilenet_v2_fpn(64, LastLevelP6P7(64, 64), init)
    sizes = tuple((s, int(s * 1.26), int(s * 1.59)) for s in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes + 1, anchor_generator=anchors, score_thresh=0.01, nms_thresh=0.6,
                     detections_per_img=50, topk_candidates=200, **_transform_kwargs(size))


def _faster_rcnn(num_classes: int, size: int, init: str) -> nn.Module:
    backbone = mobilenet_v2_fpn(64, LastLevelMaxPool(), init)
    sizes = ((16,), (32,), (64,), (128,))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    roi_pool = MultiScaleRoIAlign(["0", "1", "2", "pool"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(64 * 7 * 7, 256)
    return FasterRCNN(backbone, None, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, box_head=box_head,
                      box_predictor=FastRCNNPredictor(256, num_classes + 1),
                      rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                      box_batch_size_per_image=128, box_score_thresh=0.01, box_nms_thresh=0.6,
                      box_detections_per_img=50, **_transform_kwargs(size))


@dataclass(frozen=True)
class DetArch:
    """A detection architecture: how to build it and what it is for."""

    name: str
    build: Callable[[int, int, str], nn.Module]
    single_stage: bool
    description: str


DET_ARCHS: dict[str, DetArch] = {
    "fcos-mnv2": DetArch("fcos-mnv2", _fcos, True,
                         "FCOS, MobileNetV2 to stride 16 + 32-channel FPN (P3-P6), 2-conv head: the fast model"),
    "fcos-mnv2-bn": DetArch("fcos-mnv2-bn", _fcos_bn, True,
                            "fcos-mnv2 with a per-level BatchNorm head (padding-independent, all-INT8)"),
    "fcos-mnv2-s32": DetArch("fcos-mnv2-s32", partial(_fcos, last_stride=32), True,
                             "fcos-mnv2 with the trunk to stride 32 (the 160/320-channel stages give P5): a larger candidate"),
    "fcos-mnv2-w64": DetArch("fcos-mnv2-w64", partial(_fcos, channels=64), True,
                             "fcos-mnv2 with a 64-channel FPN and head: a larger candidate"),
    "retinanet-mnv2": DetArch("retinanet-mnv2", _retinanet, True,
                              "RetinaNet, MobileNetV2 + 64-channel FPN (P3-P7), 9 anchors per place"),
    "fasterrcnn-mnv2": DetArch("fasterrcnn-mnv2", _faster_rcnn, False,
                               "Faster R-CNN, MobileNetV2 + 64-channel FPN, 256-d box head (two-stage)"),
}


def build_detector(arch: str, num_classes: int, size: int = 256, init: str = "imagenet") -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (background is added inside)."""
    if arch not in DET_ARCHS:
        raise ModelError(f"unknown detector architecture {arch!r}; choose one of {', '.join(DET_ARCHS)}")
    return DET_ARCHS[arch].build(num_classes, size, init)


# The runtime pads each input side of an exported dense detector to a multiple of this;
# 32 keeps wide frames cheap, and a coarse level whose stride does not divide the side
# gets its anchors at the nominal stride (in the graph), where its cells really are.
INPUT_MULTIPLE = 32


def backbone_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(pretrained trunk, everything else): the two groups of the discriminative learning rates."""
    trunk = [p for n, p in model.named_parameters() if n.startswith("backbone.body.")]
    ids = {id(p) for p in trunk}
    return trunk, [p for p in model.parameters() if id(p) not in ids]


class DenseDetectorExport(nn.Module):
    """The network part of a single-stage detector with box decoding, for ONNX.

    The input height and width are free (each a multiple of ``INPUT_MULTIPLE``), so the
    runtime can pad a wide frame only up to the next multiple instead of to a square:
    anchors are built in the graph from each level's feature shape with the level's
    nominal stride (measured once at ``size``), the same anchors torchvision makes for
    a square input.  Scores follow torchvision's own postprocessing
    (FCOS: sqrt(sigmoid(class) * sigmoid(centerness)); RetinaNet: sigmoid(class)).
    """

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        if not isinstance(model, (FCOS, RetinaNet)):
            raise ModelError("dense export needs a single-stage detector (FCOS / RetinaNet)")
        self.model = model
        self.is_fcos = isinstance(model, FCOS)
        self.register_buffer("mean", torch.tensor(GRAY_MEAN).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(GRAY_STD).view(1, 1, 1, 1))
        with torch.no_grad():
            dummy = torch.zeros(1, 1, size, size)
            feats = list(model.backbone(dummy).values())
            self.strides = [size // f.shape[-1] for f in feats]
        for i, cell in enumerate(model.anchor_generator.cell_anchors):  # per level: A x 4 anchors centred on (0, 0)
            self.register_buffer(f"cell{i}", cell.to(torch.float32))

    def anchors(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(sum over levels of H x W x A) x 4 anchors, in torchvision's order."""
        out = []
        for i, (f, stride) in enumerate(zip(feats, self.strides)):
            ys = torch.arange(f.shape[-2], dtype=torch.float32) * stride
            xs = torch.arange(f.shape[-1], dtype=torch.float32) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
            out.append((shifts + getattr(self, f"cell{i}").view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.mean) / self.std
        feats = list(self.model.backbone(x).values())
        out = self.model.head(feats)
        b = x.shape[0]
        reg = out["bbox_regression"]
        anchors = self.anchors(feats).unsqueeze(0).expand(b, -1, -1).reshape(-1, 4)
        coder = self.model.box_coder
        decode = coder.decode if self.is_fcos else coder.decode_single
        boxes = decode(reg.reshape(-1, 4), anchors).reshape(b, -1, 4)
        boxes = boxes.clamp(min=0)  # the runtime clips to the image's own edges
        scores = torch.sigmoid(out["cls_logits"])
        if self.is_fcos:
            scores = torch.sqrt(scores * torch.sigmoid(out["bbox_ctrness"]))
        return boxes, scores[:, :, 1:]  # column 0 is torchvision's never-trained background
