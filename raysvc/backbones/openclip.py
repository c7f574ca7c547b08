"""open_clip models: any architecture, weights by pretrained tag, local file or random."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from raysvc.backbones import BACKBONES
from raysvc.backbones.base import Backbone, PromptEncoder
from raysvc.errors import ConfigError
from raysvc.options import Options, option


class CLIPPromptEncoder(PromptEncoder):
    """CoOp's text side: "X X .. X <class name>." with the X embeddings learnable."""

    def __init__(self, model, tokenizer, classnames: Sequence[str], n_ctx: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_classes = len(classnames)
        self.token_dim = model.token_embedding.weight.shape[1]
        tokens = tokenizer([" ".join(["X"] * n_ctx) + f" {name}." for name in classnames])
        self.register_buffer("tokens", tokens, persistent=False)

    def encode(self, ctx: torch.Tensor, classes: slice) -> torch.Tensor:
        model = self.model
        cast = model.transformer.get_cast_dtype()
        tokens = self.tokens[classes]
        words = model.token_embedding(tokens).to(cast)
        x = torch.cat([words[:, :1], ctx.to(cast), words[:, 1 + self.n_ctx :]], dim=1)
        x = x + model.positional_embedding.to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        # the end-of-text token has the largest id in CLIP's vocabulary
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        projection = model.text_projection
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x, dim=-1)

    def word_embeddings(self, words: str) -> torch.Tensor:
        tokens = self.tokenizer([words])[0]
        end = int(tokens.argmax())  # the end-of-text token has the largest id
        return self.model.token_embedding(tokens[1:end].to(self.tokens.device)).detach()


def _apply(transform, images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.stack([transform(im.convert("RGB")) for im in images])


def _weights_id(weights: str) -> str:
    path = Path(weights).expanduser()
    if path.is_file():
        stat = path.stat()
        return "file-" + hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return weights


def _pretrained(model: str, weights: str) -> str | None:
    """open_clip's ``pretrained`` argument for ``weights``; ConfigError when it names nothing."""
    import open_clip

    if model not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {model!r}; see open_clip.list_models()")
    if weights == "random":
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path)
    if weights in open_clip.list_pretrained_tags_by_model(model):
        return weights  # downloaded by open_clip: needs the hub, as on clusters
    raise ConfigError(f"weights {weights!r} for {model} are neither a file, 'random' nor a pretrained tag")


@BACKBONES.register
class OpenCLIPBackbone(Backbone):
    """Any open_clip model; weights by pretrained tag (needs the hub), checkpoint file or random."""

    name = "open_clip:<model>[:<pretrained tag|checkpoint path|random>]"
    fixed = ("model", "weights")

    @classmethod
    def from_name(cls, name: str) -> dict[str, str] | None:
        """``open_clip:<model>[:<weights>]``."""
        if not name.startswith("open_clip:"):
            return None
        model, sep, weights = name.removeprefix("open_clip:").partition(":")
        return {"model": model, "weights": weights} if sep else {"model": model}

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        model: str = option("", "open_clip architecture (set by the name)")
        weights: str = option("random", "pretrained tag, checkpoint path or 'random' (set by the name)")

        def check(self):
            from raysvc._compat import import_torchvision

            import_torchvision()
            _pretrained(self.model, self.weights)

    def __init__(self, options: Options, image_size: int | None = None):
        import open_clip

        model_name, weights = options.model, options.weights
        pretrained = _pretrained(model_name, weights)
        model, _, self._transform = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_id = f"open_clip-{model_name}-{_weights_id(weights)}"
        self.embed_dim = self.model.text_projection.shape[1] if not isinstance(
            self.model.text_projection, nn.Linear) else self.model.text_projection.out_features
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self.image_size = self.model.visual.image_size[0] if isinstance(
            self.model.visual.image_size, (tuple, list)) else int(self.model.visual.image_size)
        self.device = torch.device("cpu")

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return _apply(self._transform, images)

    def preprocessor(self):
        return functools.partial(_apply, self._transform)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels.to(self.device)), dim=-1)

    def encode_text(self, prompts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        raw = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))
        return F.normalize(raw, dim=-1) if normalize else raw

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int) -> PromptEncoder:
        for p in self.model.parameters():
            p.requires_grad_(False)
        return CLIPPromptEncoder(self.model, self.tokenizer, classnames, n_ctx).to(self.device)

    def last_conv_layer(self) -> nn.Module | None:
        return getattr(self.model.visual, "layer4", None)  # ModifiedResNet towers
