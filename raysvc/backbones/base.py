"""The VLM backbone interface: images and class prompts in one embedding space.

Prompt learning needs to put learnable context vectors in front of the class name
inside the text encoder; :meth:`Backbone.prompt_encoder` returns a module that does
that for the backbone's own text encoder.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.utils.checkpoint
from PIL import Image
from torch import nn

from raysvc.options import NoOptions, Options

# Classes encoded at once. Every training step runs the text encoder on every class's
# prompt, and backpropagation keeps each layer's activations: for 1000 ImageNet classes
# through MiniLM that is ~3.6 GB. Above this many classes each chunk is checkpointed
# (its forward recomputed in the backward pass), so one chunk's activations are held.
CLASS_CHUNK = 32


class PromptEncoder(nn.Module, abc.ABC):
    """Text encoder with ``n_ctx`` learnable-context slots before each class name.

    ``forward(ctx)`` takes context vectors of shape (n_ctx, token_dim) (one prompt shared
    by all classes) or (n_classes, n_ctx, token_dim) (class-wise) and returns the
    L2-normalised class embeddings, (n_classes, embed_dim). The encoder's own weights
    are frozen; gradients flow to ``ctx`` only. Subclasses implement :meth:`encode`.
    """

    n_ctx: int
    token_dim: int
    n_classes: int

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        ctx = ctx.expand(self.n_classes, -1, -1) if ctx.dim() == 2 else ctx
        if self.n_classes <= CLASS_CHUNK:
            return self.encode(ctx, slice(0, self.n_classes))
        parts = []
        for start in range(0, self.n_classes, CLASS_CHUNK):
            rows = slice(start, min(start + CLASS_CHUNK, self.n_classes))
            if torch.is_grad_enabled() and ctx.requires_grad:
                parts.append(torch.utils.checkpoint.checkpoint(self.encode, ctx[rows], rows, use_reentrant=False))
            else:
                parts.append(self.encode(ctx[rows], rows))
        return torch.cat(parts)

    @abc.abstractmethod
    def encode(self, ctx: torch.Tensor, classes: slice) -> torch.Tensor:
        """The normalised embeddings of the prompts of ``classes``, given their (len, n_ctx, token_dim) context."""

    @abc.abstractmethod
    def word_embeddings(self, words: str) -> torch.Tensor:
        """(tokens, token_dim) input embeddings of ``words`` (no special tokens): CoOp's
        ``ctx_init``, which starts the context as these words."""


class Backbone(abc.ABC):
    """A frozen vision-language model.

    model_id: stable identifier of architecture and weights (the feature cache keys on it).
    embed_dim: dimension of the shared image/text space.
    logit_scale: multiplier of cosine similarities in zero-shot and prompt-learning logits.
    image_size: side of the square images the image encoder receives.

    Subclasses set ``name`` (the registry key; see :mod:`raysvc.registry` for ``preset`` and
    families), declare a nested ``Options`` dataclass and are built as
    ``cls(options, image_size)`` (``image_size`` None: the model's own).
    """

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = NoOptions
    model_id: str
    embed_dim: int
    logit_scale: float
    image_size: int

    @abc.abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> a normalised (B, 3, S, S) batch."""

    def preprocessor(self) -> Callable[[Sequence[Image.Image]], torch.Tensor]:
        """A picklable function doing what :meth:`preprocess` does, for decode workers that
        should not load the model (the Ray Data encoder ships it to every CPU task). This
        default is the bound method, which pickles the whole backbone: backbones override it."""
        return self.preprocess

    @abc.abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> L2-normalised (B, embed_dim); differentiable (GradFAM needs it)."""

    @abc.abstractmethod
    def encode_text(self, prompts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Prompts -> (P, embed_dim), L2-normalised unless ``normalize=False`` (the raw embedding,
        whose per-class mean anchors ActiveKD's CLAP teacher)."""

    @abc.abstractmethod
    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int) -> PromptEncoder:
        """A text encoder with ``n_ctx`` learnable slots before each class name."""

    def to(self, device: str | torch.device) -> Backbone:
        for module in self.modules():
            module.to(device)
        self.device = torch.device(device)
        return self

    @abc.abstractmethod
    def modules(self) -> list[nn.Module]:
        """The torch modules that make up the backbone (for device moves)."""

    def last_conv_layer(self) -> nn.Module | None:
        """The module whose output is the image encoder's last convolutional activation map
        (GradFAM hooks it); None when the image encoder is not convolutional."""
        return None
