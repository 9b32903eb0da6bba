"""Student presets, shapes, heads and instruction handling; the three losses on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from vla_distill.models.checkpoint import load_pretrained, save_pretrained
from vla_distill.models.losses import LossConfig, action_loss, combine, direction_loss, phase_loss
from vla_distill.models.student import StudentPolicy, preset_config
from vla_distill.models.vision import VisionConfig, random_shift

CAMS = ("observation.images.a", "observation.images.b")


def batch(b: int = 3, size: int = 64, cams=CAMS, depth=()) -> dict:
    out = {k: torch.rand(b, 3, size, size) for k in cams}
    out.update({k: torch.rand(b, 1, size, size) for k in depth})
    out["observation.state"] = torch.randn(b, 4)
    out["task"] = ["pick"] * b
    return out


@pytest.mark.parametrize("preset,lo,hi", [("tiny", 2e6, 4e6), ("small", 25e6, 40e6), ("base", 150e6, 166e6)])
def test_preset_parameter_counts(preset, lo, hi):
    policy = StudentPolicy(preset_config(preset, image_keys=CAMS, tasks=("pick",)))
    n = policy.num_parameters()
    print(f"{preset}: {n / 1e6:.2f}M parameters, {policy.num_parameters(deployed=True) / 1e6:.2f}M deployed")
    assert lo <= n <= hi
    assert policy.num_parameters(deployed=True) < n  # phase/direction heads are training-only


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        preset_config("tinny")


def test_a_resnet_needs_as_many_block_counts_as_widths():
    with pytest.raises(ValueError, match="widths and vision.blocks"):
        VisionConfig(widths=(8, 16), blocks=(1, 1, 1))


@pytest.mark.parametrize("kind,horizon,head",
                         [("resnet", 1, "continuous"), ("vit", 5, "continuous"), ("resnet", 5, "discrete"),
                                               ("efficientnet-lite0", 5, "continuous")])
def test_output_shapes(kind, horizon, head):
    cfg = preset_config("tiny", image_keys=CAMS, image_size=(64, 64), tasks=("pick",), horizon=horizon,
                        action_head=head,
                        vision=VisionConfig(kind=kind, widths=(8, 16, 16, 32), vit_width=32, vit_depth=1, vit_heads=2),
                        d_model=64, n_layers=1, n_heads=2, n_phases=9)
    policy = StudentPolicy(cfg).eval()
    out = policy.encode(batch())
    assert out["action"].shape == ((3, horizon, 4) if head == "continuous" else (3, horizon, 4, 256))
    assert out["phase_logits"].shape == (3, 9)
    assert out["direction"].shape == (3, 384)
    torch.testing.assert_close(out["direction"].norm(dim=-1), torch.ones(3))
    chunk = policy.predict_action_chunk(batch())
    assert chunk.shape == (3, horizon, 4) and torch.isfinite(chunk).all()


def kp_student(**fields) -> StudentPolicy:
    cfg = preset_config("tiny", image_keys=CAMS, image_size=(64, 64), tasks=("pick",), horizon=2, d_model=64,
                        n_layers=1,
                        n_heads=2, vision=VisionConfig(kind="efficientnet-lite0"), **fields)
    policy = StudentPolicy(cfg)
    policy.load_pretrained_vision()
    return policy


def test_pretrained_trunk_has_the_imagenet_weights_and_stays_frozen():
    from vla_distill.models.efficientnet import weights_file

    state = torch.load(weights_file("efficientnet-lite0"), weights_only=True)
    policy = kp_student().train()
    trunk = policy.encoder.trunk
    torch.testing.assert_close(trunk.blocks[4].project_conv.weight, state["_blocks.4._project_conv.weight"])
    torch.testing.assert_close(trunk.bn0.running_var, state["_bn0.running_var"])
    assert not trunk.training and len(trunk.blocks) == 5 and trunk.out_channels == 40  # stride 8: stem + 5 blocks
    before = trunk.bn0.running_mean.clone()
    loss, _ = policy(batch() | {"action": torch.randn(3, 2, 4)}, LossConfig(phase_weight=0, direction_weight=0))
    loss.backward()
    assert all(p.grad is None for p in trunk.parameters()) and policy.encoder.head.proj.weight.grad is not None
    torch.testing.assert_close(trunk.bn0.running_mean, before)  # no batch statistics were taken


def test_trunk_reproduces_tensorflow_same_padding():
    from vla_distill.models.efficientnet import _same_pad

    x = torch.ones(1, 1, 64, 64)
    assert _same_pad(x, 3, 2).shape[-2:] == (65, 65)  # 1 pixel, all of it after: TF's SAME for an even input
    assert _same_pad(x, 5, 2)[0, 0, 0].sum() == 0 and _same_pad(x, 5, 2)[0, 0, 1:, 1].sum() == 64
    assert _same_pad(x, 3, 1).shape[-2:] == (66, 66)


def test_cached_trunk_features_give_the_same_actions_as_pixels():
    from vla_distill.types import feature_key

    policy = kp_student().eval()
    b = batch()
    with torch.no_grad():
        cached = {k: v for k, v in b.items() if k not in CAMS}
        cached |= {feature_key(k): policy.encoder.trunk(b[k]) for k in CAMS}
        torch.testing.assert_close(policy.predict_action_chunk(cached), policy.predict_action_chunk(b))
    assert feature_key(CAMS[0]) == "observation.image_features.a"


def test_cached_features_are_shifted_in_training_only_and_by_sample_key():
    from vla_distill.types import feature_key

    policy = kp_student(feature_shift=1)
    b = batch()
    with torch.no_grad():
        feats = {k: v for k,
                 v in b.items() if k not in CAMS} | {feature_key(k): policy.encoder.trunk(b[k]) for k in CAMS}
        feats["augment_key"] = torch.arange(3)
        policy.train()
        a1, a2 = policy.encode(feats)["action"], policy.encode(feats)["action"]
        policy.eval()
        plain = policy.encode(feats)["action"]
    torch.testing.assert_close(a1, a2)  # the shift is a function of the sample's key
    assert not torch.allclose(a1, plain)  # and only applies in training


def test_pretrained_encoder_refuses_a_depth_channel():
    with pytest.raises(ValueError, match="RGB only"):
        kp_student(depth_keys=("observation.images.da", "observation.images.db"))


def test_depth_channel_and_select_action_queue():
    cfg = preset_config("tiny", image_keys=CAMS, image_size=(64, 64),
                        depth_keys=("observation.images.da", "observation.images.db"),
                        tasks=("pick",), horizon=3, d_model=64, n_layers=1, n_heads=2)
    policy = StudentPolicy(cfg).eval()
    assert policy.encoder.stem[0].in_channels == 4
    b = batch(1, depth=cfg.depth_keys)
    chunk = policy.predict_action_chunk(b)
    policy.reset()
    got = [policy.select_action(b) for _ in range(3)]
    torch.testing.assert_close(torch.stack(got, 1), chunk)  # one inference serves K steps


def test_new_instruction_is_embedded_once_at_reset():
    cfg = preset_config("tiny", image_keys=CAMS[:1], image_size=(64, 64), tasks=("pick",), d_model=64, n_layers=1,
                        n_heads=2)
    policy = StudentPolicy(cfg).eval()
    calls = []

    class Counting:
        def encode(self, texts):
            calls.append(list(texts))
            return torch.nn.functional.normalize(torch.randn(len(texts), 384), dim=-1).numpy()

    policy._text_encoder = Counting()
    policy.reset(task="open the drawer")
    b = batch(1, cams=CAMS[:1])
    b["task"] = ["open the drawer"]
    for _ in range(5):
        policy.select_action(b)
    b["task"] = ["pick"]  # a training instruction never needs the encoder
    policy.select_action(b)
    assert calls == [["open the drawer"]]


def test_checkpoint_round_trip_keeps_outputs_and_stats(tmp_path):
    cfg = preset_config("tiny", image_keys=CAMS, image_size=(64, 64), tasks=("pick", "place"), horizon=2,
                        d_model=64, n_layers=1, n_heads=2, vision=VisionConfig(widths=(8, 16, 16, 32)))
    policy = StudentPolicy(cfg).eval()
    policy.action_mean.fill_(0.3)
    policy.task_embeddings.normal_()
    save_pretrained(policy, tmp_path / "pretrained_model")
    loaded = load_pretrained(tmp_path)
    b = batch()
    torch.testing.assert_close(loaded.predict_action_chunk(b), policy.predict_action_chunk(b))
    assert loaded.config == cfg


def test_random_shift_moves_content_within_bounds():
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 8, 8] = 1
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = [divmod(int(img.argmax()), 16) for img in y[:, 0]]
    assert all(abs(r - 8) <= 2 and abs(c - 8) <= 2 for r, c in pos) and len(set(pos)) > 1


# ---------------------------------------------------------------- losses
def test_action_loss_masks_padding_and_weights_dims():
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [9.0, 9.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    pad = torch.tensor([[False, False, True], [False, False, False]])
    per = action_loss(pred, target, pad, "mse")
    torch.testing.assert_close(per, torch.tensor([0.5, 2.0]))  # the padded 9s never count
    per_w = action_loss(pred, target, pad, "mse", torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(per_w, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(action_loss(pred, target, pad, "l1"), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(action_loss(pred, target, pad, "smooth_l1"), torch.tensor([0.25, 0.75]))


def test_discrete_action_loss_prefers_the_right_bin():
    target = torch.tensor([[[-1.0, 0.0, 1.0]]])
    bins = torch.tensor([0, 128, 255])  # round((t + 1) / 2 * 255)
    good = torch.full((1, 1, 3, 256), -10.0)
    good[0, 0, torch.arange(3), bins] = 10.0
    bad = torch.roll(good, 7, dims=-1)
    assert action_loss(good, target, None, "discrete") < 1e-3 < action_loss(bad, target, None, "discrete")


def test_phase_loss_ignores_masked_labels():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    per, valid = phase_loss(logits, torch.tensor([0, -1, 1]))
    assert valid.tolist() == [True, False, True] and per[1] == 0
    torch.testing.assert_close(per[2], F.cross_entropy(logits[2:], torch.tensor([1]))[()])


def test_direction_loss_treats_shared_cues_as_positives():
    text = F.normalize(torch.eye(3, 8), dim=-1)  # three orthogonal cue embeddings
    ids = torch.tensor([0, 0, 1, 2, -1])
    emb = text[ids.clamp_min(0)]
    z = emb.clone()  # every frame's embedding on its own cue
    scale = torch.tensor(math.log(100.0))
    loss = direction_loss(z, ids, emb, scale)
    # Were the duplicate frame of cue 0 a negative, the text->student side alone would cost >= log(2) / 2.
    assert loss < 1e-3
    wrong = direction_loss(z[[2, 3, 0, 1, 4]], ids, emb, scale)
    assert wrong > 10
    assert direction_loss(z, torch.tensor([0, 0, -1, -1, -1]), emb, scale) == 0  # one cue: nothing to contrast


def test_direction_loss_temperature_is_learnable():
    text = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.arange(4)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    direction_loss(F.normalize(text + 0.3 * torch.randn(4, 8), dim=-1), ids, text, scale).backward()
    assert scale.grad is not None and scale.grad != 0


def test_weights_are_applied_in_one_place():
    named = {"action": torch.tensor(1.0), "phase": torch.tensor(2.0), "direction": torch.tensor(4.0)}
    assert float(combine(named, LossConfig())) == pytest.approx(1 + 0.1 * 2 + 0.05 * 4)
    assert float(combine({"action": torch.tensor(1.0)}, LossConfig(phase_weight=0, direction_weight=0))) == 1.0
