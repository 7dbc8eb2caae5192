"""Tests for the RadScribe-style encoder-decoder on tiny random-init configs."""

from __future__ import annotations

import json

import pytest
import torch

from radixpert.models.encoder_decoder import (
    CONFIG_NAME,
    ENCODER_PARTS,
    RadScribe,
    build_encoder_decoder,
    set_stage,
    tiny_configs,
    tiny_encoder_decoder,
)

BATCH, TEXT, TARGET = 2, 5, 7


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, 64, (BATCH, TARGET), generator=generator)
    labels[1, -2:] = -100
    attention_mask = torch.ones(BATCH, TEXT, dtype=torch.long)
    attention_mask[1, -1] = 0
    return {
        "pixel_values": torch.randn(BATCH, 3, 32, 32, generator=generator),
        "input_ids": torch.randint(2, 64, (BATCH, TEXT), generator=generator),
        "attention_mask": attention_mask,
        "labels": labels,
    }


def _targets() -> torch.Tensor:
    target = torch.zeros(BATCH, 14)
    target[0, 2] = 1.0
    target[1, 5] = float("nan")  # missing observation
    return target


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit", "resnet"])
@pytest.mark.parametrize("label_branch", [True, False])
def test_forward_shapes_and_finite_loss(backbone: str, label_branch: bool) -> None:
    torch.manual_seed(0)
    model = tiny_encoder_decoder(backbone, label_branch=label_branch)
    batch = _batch()
    target = _targets() if label_branch else None
    out = model(**batch, labels_target=target)
    assert out.logits.shape == (BATCH, TARGET, 64)
    assert torch.isfinite(out.loss)
    assert out.memory.shape[0] == BATCH and out.memory.shape[-1] == 32
    # [CLS] + image tokens + [SEP] + text: 16 patches + ViT's CLS, or a 4x4 ResNet map.
    n_image = 17 if backbone == "vit" else 16
    assert out.memory.shape[1] == n_image + 2 + TEXT
    assert out.memory_mask[1, -1] == 0 and out.memory_mask[:, : n_image + 2].all()
    if label_branch:
        assert out.label_logits.shape == (BATCH, 14)
        assert torch.isfinite(out.label_loss)
        torch.testing.assert_close(out.loss, out.lm_loss + model.label_loss_weight * out.label_loss)
    else:
        assert out.label_logits is None and out.label_loss is None
        torch.testing.assert_close(out.loss, out.lm_loss)


@pytest.mark.slow
def test_empty_prompt_and_no_text() -> None:
    model = tiny_encoder_decoder("vit", label_branch=False).eval()
    batch = _batch()
    empty = torch.zeros(BATCH, 0, dtype=torch.long)
    a = model(batch["pixel_values"], input_ids=empty, labels=batch["labels"])
    b = model(batch["pixel_values"], labels=batch["labels"])
    assert a.memory.shape[1] == 17 + 2
    torch.testing.assert_close(a.logits, b.logits)


def test_bad_inputs_fail_loudly() -> None:
    model = tiny_encoder_decoder("vit", label_branch=False)
    batch = _batch()
    with pytest.raises(ValueError, match="no label branch"):
        model(**batch, labels_target=_targets())
    with pytest.raises(ValueError, match="labels or decoder_input_ids"):
        model(batch["pixel_values"])
    labelled = tiny_encoder_decoder("resnet", label_branch=True)
    bad = torch.full((BATCH, 14), -1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        labelled(**batch, labels_target=bad)
    with pytest.raises(ValueError, match="stage"):
        set_stage(labelled, "encoder")  # type: ignore[arg-type]
    configs = tiny_configs("vit")
    with pytest.raises(TypeError, match="ResNetConfig"):
        build_encoder_decoder(
            "resnet",
            configs["backbone_config"],
            configs["joint_config"],
            configs["decoder_config"],
        )


def test_decoder_width_differs_from_joint_width() -> None:
    configs = tiny_configs("resnet")
    configs["decoder_config"].d_model = 16
    model = build_encoder_decoder("resnet", label_branch=True, **configs)
    out = model(**_batch(), labels_target=_targets())
    assert out.memory.shape[-1] == 16 and torch.isfinite(out.loss)


@pytest.mark.slow
def test_training_lowers_loss_then_save_reload_is_identical(tmp_path) -> None:
    torch.manual_seed(0)
    model = tiny_encoder_decoder("vit", label_branch=True)
    batch, target = _batch(), _targets()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = model(**batch, labels_target=target).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if len(losses) == 1:
            changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
            assert len(changed) == len(before)  # one step moves every parameter
    assert losses[-1] < 0.5 * losses[0]

    model.eval()
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    generated = model.generate(**inputs, max_new_tokens=TARGET)
    assert generated.shape == (BATCH, TARGET + 1)
    assert len(torch.unique(generated[:, 1:])) > 1  # trained: not one repeated token
    # The cached greedy loop agrees with teacher forcing on its own output.
    teacher = model(**inputs, decoder_input_ids=generated[:, :-1]).logits.argmax(-1)
    assert torch.equal(teacher, generated[:, 1:])

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert {"backbone_config", "joint_config", "decoder_config"} <= set(config)
    reloaded = RadScribe.from_pretrained(tmp_path)
    assert not reloaded.training
    with torch.no_grad():
        a = model(**batch, labels_target=target)
        b = reloaded(**batch, labels_target=target)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.label_logits, b.label_logits)
    assert torch.equal(reloaded.generate(**inputs, max_new_tokens=TARGET), generated)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_from_pretrained_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        RadScribe.from_pretrained(tmp_path)


def test_generate_stops_at_eos_and_pads() -> None:
    model = tiny_encoder_decoder("resnet", label_branch=False).eval()
    config = model.t5.config  # start = pad = 0, eos = 1

    def script(module, args, logits):  # row 0 says eos at once, row 1 keeps saying 5
        forced = torch.full_like(logits, -1e4)
        forced[0, :, config.eos_token_id] = 0.0
        forced[1, :, 5] = 0.0
        return forced

    handle = model.t5.lm_head.register_forward_hook(script)
    generated = model.generate(_batch()["pixel_values"], max_new_tokens=4)
    handle.remove()
    assert generated.tolist() == [[0, 1, 0, 0, 0], [0, 5, 5, 5, 5]]
    # Both rows end at once: decoding stops after one step instead of running to the limit.
    model.t5.lm_head.register_forward_hook(lambda m, a, logits: script(m, a, logits)[[0, 0]])
    assert model.generate(_batch()["pixel_values"], max_new_tokens=4).tolist() == [[0, 1]] * 2


def test_label_branch_gradient_reaches_classifier_and_embeddings() -> None:
    torch.manual_seed(0)
    model = tiny_encoder_decoder("vit", label_branch=True)
    # The report loss alone must reach them through the fusion (probabilities -> label tokens).
    model(**_batch()).loss.backward()
    for param in (model.label_head.weight, model.label_embeddings):
        assert param.grad is not None and param.grad.abs().sum() > 0
    model.zero_grad()
    model(**_batch(), labels_target=_targets()).label_loss.backward()
    assert model.label_head.weight.grad.abs().sum() > 0


def test_set_stage_freezes_encoder_side() -> None:
    model = tiny_encoder_decoder("resnet", label_branch=True)
    set_stage(model, "decoder")
    for name, param in model.named_parameters():
        encoder_side = name.split(".", 1)[0] in ENCODER_PARTS
        assert param.requires_grad is not encoder_side, name
    model.train()
    assert not model.backbone.training and not model.joint.training
    assert model.t5.training and model.label_fusion.training
    out = model(**_batch(), labels_target=_targets())
    out.loss.backward()
    assert model.joint.embeddings.word_embeddings.weight.grad is None
    assert model.t5.lm_head.weight.grad is not None

    set_stage(model, "end_to_end")
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.training and model.joint.training
