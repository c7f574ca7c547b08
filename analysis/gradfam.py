"""GradFAM: where a convolutional image encoder looks when its embedding aligns with a target.

Kim et al. 2024 (appendix A) adapt Grad-CAM to embeddings: with ``A`` (B, K, h, w) the
activations of the image encoder's last convolutional layer
(:meth:`raysvc.backbones.base.Backbone.last_conv_layer`: ConSE's EfficientNet conv head,
open_clip ResNets' ``layer4``) and ``s`` an alignment score of the image embedding with a
target,

    w_k = mean_{i,j} ds/dA_k[i, j],      heatmap = ReLU(sum_k w_k A_k),

bilinearly upsampled to the input image's size and divided by its maximum (so values lie
in [0, 1]; an all-zero map stays zero). Targets:

``"text"``   ``s = cos(f(x), t_c)``: the text embedding of class ``c`` (the given label, else
             the zero-shot prediction).
``"guided"`` the class-guided feature's text half: ``s = cos(f(x), m)``,
             ``m = normalise(sum_c p(c|x) t_c)`` (detached), with ``p`` the given class
             probabilities, else zero-shot ``softmax(logit_scale * cos(f(x), t))``. The class-guided
             feature ``z = [f(x); m] / sqrt 2`` lives in twice the image dimension, so the
             image embedding cannot be compared with ``z`` itself; its image half is ``f(x)``,
             which is the ``"image"`` target, so what the class-guided feature adds is ``m``
             and that is the target used. (Also: ``cos([f(x); m], z)`` is a fixed 50/50 mix of
             the two targets' scores, so it carries no other information.)
``"image"``  the image's own embedding, detached. ``cos(f(x), f(x).detach())`` has an
             identically zero gradient (a unit vector's cosine with itself is stationary),
             so this target uses the dot product of the *unnormalised* embedding ``y`` with the
             detached unit embedding, ``s = <y, y/|y|>`` = ``|y|`` at the image: the regions that
             make the embedding stronger along its own direction. It needs the backbone's
             pre-normalisation embedding (:func:`raw_image_embedding`: ConSE and open_clip).
An explicit (D,) or (B, D) target tensor uses the cosine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from raysvc.errors import AnalysisError

TARGETS = ("text", "image", "guided")


def raw_image_embedding(backbone, pixels: torch.Tensor) -> torch.Tensor | None:
    """The image embedding before L2 normalisation, or None when the backbone does not expose it."""
    if hasattr(backbone, "imagenet_probs") and hasattr(backbone, "imagenet_text"):  # ConSE
        probs, classes = backbone.imagenet_probs(pixels).topk(backbone.top_t, dim=-1)
        return (probs.unsqueeze(-1) * backbone.imagenet_text[classes]).sum(1)
    model = getattr(backbone, "model", None)
    if model is not None and hasattr(model, "encode_image"):  # open_clip
        return model.encode_image(pixels)
    return None


def _as_rows(t, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t, dtype=torch.float32).to(device)
    if t.dim() == 1:
        t = t.expand(batch, -1)
    if t.shape[0] != batch:
        raise AnalysisError(f"target has {t.shape[0]} rows for {batch} images")
    return F.normalize(t.detach(), dim=-1)


def gradfam(
    backbone,
    pixels: torch.Tensor,
    target="text",
    *,
    text_features=None,
    class_index=None,
    probs=None,
    layer: torch.nn.Module | None = None,
) -> np.ndarray:
    """GradFAM heatmaps, (B, H, W) float32 in [0, 1], for preprocessed ``pixels`` (B, 3, H, W).

    ``target``: "text" (needs ``text_features`` (C, D); ``class_index`` int or (B,), default
    the zero-shot prediction), "guided" (needs ``text_features``; ``probs`` (B, C) default
    zero-shot), "image", or a (D,) / (B, D) embedding. ``layer`` defaults to
    ``backbone.last_conv_layer()``.
    """
    layer = layer if layer is not None else backbone.last_conv_layer()
    if layer is None:
        raise AnalysisError(f"GradFAM needs a convolutional image encoder; {backbone.model_id} has none")
    device = getattr(backbone, "device", torch.device("cpu"))
    pixels = pixels.to(device).detach().float()
    batch = pixels.shape[0]
    if isinstance(target, str) and target not in TARGETS:
        raise AnalysisError(f"GradFAM target must be one of {', '.join(TARGETS)} or an embedding, got {target!r}")
    if isinstance(target, str) and target in ("text", "guided") and text_features is None:
        raise AnalysisError(f"GradFAM target {target!r} needs the class text features")
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            px = pixels.requires_grad_(True)  # activations need a graph even if the weights are frozen
            if isinstance(target, str) and target == "image":
                raw = raw_image_embedding(backbone, px)
                if raw is None:
                    raise AnalysisError(
                        f"GradFAM target 'image' needs the unnormalised embedding, "
                        f"which {backbone.model_id} does not expose"
                    )
                score = (raw * F.normalize(raw, dim=-1).detach()).sum()
            else:
                emb = backbone.encode_images(px)
                if isinstance(target, str):
                    text = torch.as_tensor(np.asarray(text_features), dtype=torch.float32).to(device)
                    text = F.normalize(text, dim=-1)
                    if target == "text":
                        if class_index is None:
                            idx = (emb.detach() @ text.T).argmax(-1)
                        else:
                            idx = torch.as_tensor(np.broadcast_to(np.asarray(class_index), (batch,)).copy()).to(device)
                        goal = text[idx]
                    else:
                        if probs is None:
                            p = (backbone.logit_scale * emb.detach() @ text.T).softmax(-1)
                        else:
                            p = torch.as_tensor(np.asarray(probs), dtype=torch.float32).to(device)
                        goal = p @ text
                    goal = _as_rows(goal, batch, device)
                else:
                    goal = _as_rows(target, batch, device)
                score = F.cosine_similarity(emb, goal, dim=-1).sum()
            acts = captured[-1]
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        handle.remove()
    with torch.no_grad():
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        cam = (cam / peak).clamp(0, 1)
    return cam.cpu().numpy().astype(np.float32)


@dataclasses.dataclass
class GradFAMResult:
    path: Path
    heatmaps: dict[str, np.ndarray]  # target -> (B, H, W)


def _display(image, size: tuple[int, int]) -> np.ndarray:
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))


def draw_gradfam(images: Sequence, heatmaps: dict[str, np.ndarray], out_path, row_titles: Sequence[str] | None = None,
                 alpha: float = 0.45) -> Path:
    """A PNG grid: one row per image, the image then one overlay per target."""
    names = list(heatmaps)
    n = len(images)
    fig = Figure(figsize=(2.4 * (1 + len(names)), 2.5 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1 + len(names), squeeze=False)
    for i, image in enumerate(images):
        size = heatmaps[names[0]][i].shape
        shown = _display(image, size)
        axes[i, 0].imshow(shown)
        axes[i, 0].set_title(row_titles[i] if row_titles else "image", fontsize="small")
        for j, name in enumerate(names, start=1):
            axes[i, j].imshow(shown)
            axes[i, j].imshow(heatmaps[name][i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            empty = " (all 0)" if not np.any(heatmaps[name][i] > 0) else ""  # no positive evidence
            axes[i, j].set_title(f"GradFAM: {name}{empty}", fontsize="small")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def gradfam_figure(
    backbone,
    images: Sequence,
    text_features,
    out_path,
    labels: Sequence[int] | None = None,
    classnames: Sequence[str] | None = None,
    targets: Sequence = TARGETS,
    probs=None,
) -> GradFAMResult:
    """Preprocess ``images`` (PIL), compute GradFAM for each target and draw them; heatmaps too.

    The "text" target is each image's ``labels`` entry (else its zero-shot prediction).
    """
    pixels = backbone.preprocess(list(images))
    maps = {}
    for target in targets:
        name = target if isinstance(target, str) else "custom"
        maps[name] = gradfam(backbone, pixels, target, text_features=text_features,
                             class_index=None if labels is None else np.asarray(labels), probs=probs)
    titles = None
    if labels is not None and classnames is not None:
        titles = [str(classnames[int(c)]) for c in labels]
    return GradFAMResult(draw_gradfam(images, maps, out_path, titles), maps)


__all__ = ["GradFAMResult", "TARGETS", "draw_gradfam", "gradfam", "gradfam_figure", "raw_image_embedding"]
