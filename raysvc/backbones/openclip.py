"""open_clip models: any architecture, custom-text ones included; weights by pretrained tag,
local file or ``random``, always named."""

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


def text_tower(model: nn.Module) -> nn.Module:
    """The module holding a CLIP-style text transformer: the model itself (``CLIP``: its
    ``token_embedding``, ``transformer``, ...), or ``model.text`` (``CustomTextCLIP``: EVA-CLIP,
    SigLIP, MobileCLIP, ...). A Hugging Face text tower has no token embedding to put context
    vectors into: ConfigError."""
    tower = getattr(model, "text", model)
    if not hasattr(tower, "token_embedding") or getattr(tower, "cls_emb", None) is not None:
        raise ConfigError(f"CoOp needs a CLIP-style text transformer; this open_clip model's text tower is "
                          f"{type(tower).__name__}")
    return tower


def _pool_settings(model: nn.Module, tower: nn.Module) -> tuple[str, int | None]:
    """(pool type, end-of-text id) of the text tower: ``CLIP`` keeps them as ``text_pool_type``
    and ``text_eos_id``, ``TextTransformer`` as ``pool_type`` and ``eos_id``."""
    if tower is model:
        return getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    return tower.pool_type, getattr(tower, "eos_id", None)


class CLIPPromptEncoder(PromptEncoder):
    """CoOp's text side: "X X .. X <class name>." with the X embeddings learnable, through the
    text transformer of a CLIP or custom-text open_clip model (:func:`text_tower`), pooled as
    the model pools (open_clip ``TextTransformer.forward`` / ``CLIP.encode_text``)."""

    def __init__(self, model, tokenizer, classnames: Sequence[str], n_ctx: int):
        super().__init__()
        self.model = model
        self.tower = text_tower(model)
        self.pool_type, self.eos_id = _pool_settings(model, self.tower)
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_classes = len(classnames)
        self.token_dim = self.tower.token_embedding.weight.shape[1]
        tokens = tokenizer([" ".join(["X"] * n_ctx) + f" {name}." for name in classnames])
        placeholder = self._content(tokenizer(["X"])[0])
        if len(placeholder) != 1:
            raise ConfigError("CoOp's placeholder 'X' is not one token for this open_clip tokenizer")
        # where the context goes: the first placeholder (after a start token where the tokenizer has one)
        self.start = int((tokens[0] == placeholder[0]).nonzero()[0])
        self.register_buffer("tokens", tokens, persistent=False)

    def _content(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` without the tokenizer's special tokens (those of an empty text) and padding."""
        special = set(self.tokenizer([""])[0].tolist()) | {0}
        return tokens[[t not in special for t in tokens.tolist()]]

    def encode(self, ctx: torch.Tensor, classes: slice) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        tower = self.tower
        cast = tower.transformer.get_cast_dtype()
        tokens = self.tokens[classes]
        words = tower.token_embedding(tokens).to(cast)
        x = torch.cat([words[:, : self.start], ctx.to(cast), words[:, self.start + self.n_ctx :]], dim=1)
        attn_mask = tower.attn_mask
        if getattr(tower, "use_pad_mask", False):
            pad = tower._build_additive_mask(tokens, x.shape[1], x.dtype)
            attn_mask = pad if attn_mask is None else attn_mask[: x.shape[1], : x.shape[1]].unsqueeze(0) + pad
        x = x + tower.positional_embedding[: x.shape[1]].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=attn_mask))
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        projection = tower.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x, dim=-1)

    def word_embeddings(self, words: str) -> torch.Tensor:
        tokens = self._content(self.tokenizer([words])[0])
        return self.tower.token_embedding(tokens.to(self.tokens.device)).detach()


def _apply(transform, images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.stack([transform(im.convert("RGB")) for im in images])


def _weights_id(weights: str) -> str:
    path = Path(weights).expanduser()
    if path.is_file():
        stat = path.stat()
        return "file-" + hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return weights


def _pretrained(model: str, weights: str | None) -> str | None:
    """open_clip's ``pretrained`` argument for ``weights``; ConfigError when it names nothing
    (no weights at all included: an untrained model must be asked for as ``random``)."""
    import open_clip

    if model not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {model!r}; see open_clip.list_models()")
    if weights is None:
        tags = open_clip.list_pretrained_tags_by_model(model)
        choose = f"one of {model}'s pretrained tags ({', '.join(tags)})" if tags else "a checkpoint file " \
                 f"(open_clip has no pretrained tag for {model})"
        raise ConfigError(f"no weights named: append {choose}, e.g. "
                          f"open_clip:{model}:{tags[0] if tags else '/path/to/checkpoint.pt'}, or "
                          f"open_clip:{model}:random for an untrained model")
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
    """Any open_clip model, custom-text ones (EVA-CLIP) included; weights by pretrained tag
    (needs the hub), checkpoint file or ``random``, named: none is an error."""

    name = "open_clip:<model>:<pretrained tag|checkpoint path|random>"
    fixed = ("model", "weights")

    @classmethod
    def from_name(cls, name: str) -> dict[str, str] | None:
        """``open_clip:<model>:<weights>`` (``open_clip:<model>`` too, which the options then refuse
        with the model's tags)."""
        if not name.startswith("open_clip:"):
            return None
        model, sep, weights = name.removeprefix("open_clip:").partition(":")
        return {"model": model, "weights": weights} if sep else {"model": model}

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        model: str = option("", "open_clip architecture (set by the name)")
        weights: str | None = option(None, "pretrained tag, checkpoint path or 'random' (set by the name)")

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
        with torch.no_grad():  # the text tower's own output width, whatever its projection
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])
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
