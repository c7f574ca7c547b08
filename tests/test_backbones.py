"""VLM backbones: the ConSE formula, and prompt encoders that reproduce plain text encoding."""

import numpy as np
import pytest
import torch
from PIL import Image

from raysvc.backbones import BACKBONES, load_backbone
from raysvc.errors import ConfigError, UnknownNameError


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_conse_embedding_is_weighted_sum_of_top_t_prompt_embeddings(conse):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    pixels = conse.preprocess(_images(2))
    with torch.no_grad():
        probs = conse.imagenet_probs(pixels)
        got = conse.encode_images(pixels)
        top = probs[0].topk(conse.top_t)
        texts = conse.encode_text([f"a photo of a {IMAGENET_CLASSNAMES[i]}." for i in top.indices.tolist()])
    expected = (top.values[:, None] * texts).sum(0)
    expected = expected / expected.norm()
    assert torch.allclose(got[0], expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert got.shape == (2, conse.embed_dim) and pixels.shape[-1] == conse.image_size == 112


def _placeholder_context(words: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """Context vectors equal to the placeholder tokens' own embeddings (positions 1..n_ctx)."""
    return words[0, 1 : 1 + n_ctx].detach().clone()


def test_minilm_prompt_encoder_reproduces_text_encoding_and_trains_only_context(conse):
    names = ["cat", "giraffe"]
    encoder = conse.prompt_encoder(names, n_ctx=4)
    ctx = _placeholder_context(conse.text_model.embeddings.word_embeddings(encoder.input_ids), 4)
    ctx.requires_grad_(True)
    got = encoder(ctx)
    with torch.no_grad():
        expected = conse.encode_text([f"x x x x {n}." for n in names])
    assert torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in conse.text_model.parameters())
    classwise = encoder(ctx.detach().expand(2, -1, -1).clone())
    assert torch.allclose(classwise, expected, atol=1e-5)


def test_ctx_init_words_make_the_untrained_prompt_the_zero_shot_prompt(conse):
    """CoOp's ctx_init: a context of "a photo of a"'s word embeddings is that prompt."""
    from raysvc.learners.coop import CoOpOptions, context_length, initial_contexts

    names = ["cat", "fire truck"]
    config = CoOpOptions(ctx_init="a photo of a", prompt="both")
    assert CoOpOptions(variant="official").random_context and CoOpOptions().ctx_init == "a photo of a"
    n_ctx = context_length(config, conse)
    assert n_ctx == 4
    encoder = conse.prompt_encoder(names, n_ctx)
    contexts = initial_contexts(config, encoder, len(names), torch.Generator().manual_seed(0))
    assert contexts["unified"].shape == (4, 384) and contexts["classwise"].shape == (2, 4, 384)
    with torch.no_grad():
        expected = conse.encode_text([f"a photo of a {n}." for n in names])
        for ctx in contexts.values():
            assert torch.allclose(encoder(ctx), expected, atol=1e-5)


def test_open_clip_random_weights_same_interface():
    backbone = load_backbone("open_clip:RN50:random")
    assert backbone.model_id == "open_clip-RN50-random" and backbone.embed_dim == 1024
    pixels = backbone.preprocess(_images(1))
    with torch.no_grad():
        image = backbone.encode_images(pixels)
    assert image.shape == (1, 1024)
    encoder = backbone.prompt_encoder(["cat", "dog"], n_ctx=3)
    ctx = backbone.model.token_embedding(encoder.tokens)[0, 1:4].detach()
    with torch.no_grad():
        assert torch.allclose(encoder(ctx), backbone.encode_text(["X X X cat.", "X X X dog."]), atol=1e-4)
        words = backbone.prompt_encoder(["cat", "dog"], n_ctx=4).word_embeddings("a photo of a")
        assert words.shape == (4, encoder.token_dim)
        photo = backbone.prompt_encoder(["cat", "dog"], n_ctx=4)(words)
        assert torch.allclose(photo, backbone.encode_text(["a photo of a cat.", "a photo of a dog."]), atol=1e-4)
    assert backbone.last_conv_layer() is not None


def test_open_clip_weights_from_local_file(tmp_path):
    import open_clip

    model = open_clip.create_model("RN50", pretrained=None)
    torch.nn.init.constant_(model.text_projection, 0.01)
    path = tmp_path / "rn50.pt"
    torch.save(model.state_dict(), path)
    backbone = load_backbone(f"open_clip:RN50:{path}")
    assert backbone.model_id.startswith("open_clip-RN50-file-")
    assert torch.allclose(backbone.model.text_projection, torch.full_like(backbone.model.text_projection, 0.01))


def test_open_clip_without_weights_names_the_tags_to_choose_from():
    """An untrained model must be asked for: ``open_clip:ViT-B-32`` alone is refused, in one line
    listing its pretrained tags; ``:random`` stays."""
    import open_clip

    with pytest.raises(ConfigError) as info:
        BACKBONES.part("open_clip:ViT-B-32")
    message = str(info.value)
    assert "\n" not in message and "no weights named" in message and "open_clip:ViT-B-32:random" in message
    assert all(tag in message for tag in open_clip.list_pretrained_tags_by_model("ViT-B-32"))
    assert BACKBONES.part("open_clip:ViT-B-32:random").options.weights == "random"


def test_custom_text_open_clip_model_encodes_prompts_and_contexts():
    """EVA-CLIP-style models keep their text transformer at ``model.text`` (CustomTextCLIP; the CB
    paper's Table 10 uses EVA01-g-14-plus): the prompt encoder reproduces its plain text encoding,
    with placeholder contexts and with ``ctx_init``'s words."""
    backbone = load_backbone("open_clip:EVA02-B-16:random")
    assert type(backbone.model).__name__ == "CustomTextCLIP" and backbone.embed_dim == 512
    encoder = backbone.prompt_encoder(["cat", "dog"], n_ctx=3)
    ctx = backbone.model.text.token_embedding(encoder.tokens)[0, 1:4].detach()
    with torch.no_grad():
        assert torch.allclose(encoder(ctx), backbone.encode_text(["X X X cat.", "X X X dog."]), atol=1e-4)
        words = backbone.prompt_encoder(["cat", "dog"], n_ctx=4).word_embeddings("a photo of a")
        photo = backbone.prompt_encoder(["cat", "dog"], n_ctx=4)(words)
        assert torch.allclose(photo, backbone.encode_text(["a photo of a cat.", "a photo of a dog."]), atol=1e-4)
        image = backbone.encode_images(backbone.preprocess(_images(1)))
    assert image.shape == (1, 512)


def test_dino_resnet50_checkpoint_loads_into_the_resnet50_student(tmp_path):
    """The paper's ImageNet student: DINO's ``dino_resnet50_pretrain.pth`` is a torchvision ResNet-50
    state dict without the classifier; every one of its tensors lands in the student."""
    from raysvc._compat import import_torchvision
    from raysvc.learners.students import make_student

    torchvision = import_torchvision()
    reference = torchvision.models.resnet50()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "dino_resnet50_pretrain.pth")
    student = make_student("resnet50", 10, str(tmp_path / "dino_resnet50_pretrain.pth"))
    own = student.backbone.state_dict()
    assert student.feature_dim == 2048 and set(state) <= set(own)
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_bad_backbones():
    with pytest.raises(UnknownNameError):
        BACKBONES.part("clip-9000")
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        BACKBONES.part("open_clip:NoSuchNet")  # refused before anything loads
    with pytest.raises(ConfigError, match="neither a file"):
        load_backbone("open_clip:RN50:/no/such/file.pt")
    with pytest.raises(ConfigError, match="no weights named"):
        load_backbone("open_clip:RN50")
    with pytest.raises(ConfigError, match="fixed by the name"):
        BACKBONES.part("conse-lite0", {"variant": "lite2"})
    with pytest.raises(ConfigError, match="top_t"):
        BACKBONES.part("conse-lite0", {"top_t": 0})


def test_many_classes_are_encoded_in_checkpointed_chunks_with_the_same_values_and_gradients(conse, monkeypatch):
    """1000 classes would hold ~3.6 GB of activations: chunks give the same embeddings and gradients."""
    import raysvc.backbones.base as base

    names = ["cat", "dog", "fire truck", "tulip", "violin"]
    encoder = conse.prompt_encoder(names, n_ctx=4)
    ctx = torch.randn(4, encoder.token_dim, generator=torch.Generator().manual_seed(0)) * 0.02
    whole_ctx = ctx.clone().requires_grad_(True)
    whole = encoder(whole_ctx)
    whole[:, 0].sum().backward()
    monkeypatch.setattr(base, "CLASS_CHUNK", 2)
    chunk_ctx = ctx.clone().requires_grad_(True)
    chunked = encoder(chunk_ctx)
    chunked[:, 0].sum().backward()
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(chunk_ctx.grad, whole_ctx.grad, atol=1e-6)
