"""VITA-VLA: tiny randomly initialized VLMs of real architectures (built from their config classes, no downloads)
around a trained expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_distill.models.base import frames_to_batch
from vla_distill.models.checkpoint import load_pretrained, save_pretrained
from vla_distill.models.vita import FAMILIES, from_expert


@pytest.fixture(scope="module")
def expert(tiny_student):
    return load_pretrained(tiny_student)


@pytest.fixture(scope="module")
def batch(expert, annotated):
    from vla_distill.data.dataset import RobotDataset

    ds = RobotDataset(annotated)
    rows = np.linspace(0, ds.num_frames - 1, 8).astype(int)
    frames = {k: ds.frames(k, rows) if k in ds.camera_keys else ds.column(k)[rows] for k in expert.input_keys}
    b = frames_to_batch(frames, expert.input_keys, [ds.tasks[int(i)] for i in ds.column("task_index")[rows]])
    b["action"] = torch.from_numpy(ds.column("action.teacher")[rows].astype(np.float32)).reshape(8, 1, -1)
    return b


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_parameters_per_stage(expert, batch, family):
    p = from_expert(expert, family)
    align = set(p.set_stage("align"))
    projector = ("vlm.projector",) if family == "parts" else ()  # new with the parts VLM: trained in both stages
    assert align and all(n.startswith(("action_tokens", "arm_proj", "gripper_proj", "state_out", "mapper",
                                       *projector)) for n in align)
    finetune = set(p.set_stage("finetune"))
    added = finetune - align
    assert any(n.startswith("expert.action_head") for n in added)
    language = {"paligemma": "vlm.model.language_model", "idefics3": "vlm.model.text_model",
                "qwen2_vl": "vlm.model.language_model", "qwen2_5_vl": "vlm.model.language_model",
                "parts": "vlm.bert"}[family]
    assert all(n.startswith((language,
                             "expert.action_head")) for n in added) and any(n.startswith(language) for n in added)
    towers = ("vlm.model.vision", "vlm.model.visual", "vlm.model.multi_modal", "vlm.model.connector", "vlm.trunk")
    vision = [n for n, _ in p.named_parameters() if n.startswith(towers)]
    assert vision and not (set(vision) & finetune)  # the vision tower stays frozen
    assert not any(n.startswith(("expert.encoder", "expert.transformer")) for n in finetune)
    loss, named = p(batch, "finetune")
    loss.backward()
    assert set(named) == {"arm_smooth_l1", "gripper_bce"} and torch.isfinite(loss)
    assert all(q.grad is None for n, q in p.named_parameters() if n not in finetune)


def test_stage_2_regresses_a_gripper_whose_targets_are_not_binary(expert, batch, monkeypatch):
    """MetaWorld's grip effort is 0 or 0.6 on 40% of frames: auto keeps such a gripper continuous (smooth-L1 like
    the arm, decoded as the expert decodes it); a gripper at its two extremes is a binary decision."""
    from vla_distill.train.vita import binary_gripper

    metaworld = np.array([[0, 0, 0, -1], [0, 0, 0, 0.6], [0, 0, 0, 0], [0, 0, 0, 1]] * 5, np.float32)
    assert not binary_gripper("auto", metaworld) and binary_gripper("binary", metaworld)
    two_valued = np.stack([np.zeros(40), np.zeros(40), np.zeros(40), np.repeat([-1.0, 1.0], 20)], 1)
    assert binary_gripper("auto", two_valued[:, None]) and not binary_gripper("continuous", two_valued)
    p = from_expert(expert, "paligemma")
    p.set_stage("finetune", binary_gripper=False)
    loss, named = p(batch, "finetune")
    assert set(named) == {"action_smooth_l1"} and torch.isfinite(loss)
    p.eval()
    pred = torch.full((1, p.horizon, expert.config.action_dim), 0.5)
    assert torch.allclose(p.to_actions(pred, batch), expert.unnormalize_action(pred, batch))  # not squashed


def test_the_reused_decoder_reproduces_the_expert(expert, batch, monkeypatch):
    p = from_expert(expert, "paligemma").eval()
    monkeypatch.setattr(p, "mapped_features", lambda b: p.expert_features(b)[:, None])
    with torch.no_grad():
        assert torch.equal(p.predict_action_chunk(batch), expert.predict_action_chunk(batch))


def test_an_acting_vlm_runs_its_chunks_as_its_expert_was_trained_to(expert):
    import dataclasses

    replanning = type(expert)(dataclasses.replace(expert.config, n_action_steps=1))
    assert from_expert(expert, "paligemma").n_action_steps == expert.n_action_steps
    p = from_expert(replanning, "paligemma")
    p.reset(task="reach")
    assert p.n_action_steps == 1 and p._chunks.n == 1


def test_alignment_loss_falls(expert, batch):
    torch.manual_seed(0)
    p = from_expert(expert, "qwen2_vl")
    p.set_stage("align")
    opt = torch.optim.AdamW([q for q in p.parameters() if q.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = p(batch, "align")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_parts_vlm_carries_minilm_and_imagenet_weights(expert, batch):
    """Its language model is all-MiniLM-L6-v2 itself (mean-pooled, it embeds a sentence as the text encoder does) and
    its tower ImageNet's; parts:random is the same architecture untrained."""
    from vla_distill.models.efficientnet import EfficientNetLiteTrunk
    from vla_distill.models.efficientnet import load_pretrained as load_lite0
    from vla_distill.models.parts_vlm import parts_vlm_config
    from vla_distill.models.text import TextEncoder

    p = from_expert(expert, "parts").eval()
    text = "push the puck to the goal"
    tok = p.tokenize([text])[0]
    ids = torch.tensor([[101, *tok[tok != 0].tolist(), 102]])
    with torch.no_grad():
        hidden = p.vlm.bert(input_ids=ids).last_hidden_state.mean(1)
    ours = torch.nn.functional.normalize(hidden, dim=-1)[0].numpy()
    np.testing.assert_allclose(ours, TextEncoder().encode([text])[0], atol=1e-5)
    lite0 = EfficientNetLiteTrunk(16)
    load_lite0(lite0)
    assert all(torch.equal(a, b) for a, b in zip(lite0.state_dict().values(), p.vlm.trunk.state_dict().values(),
                                                 strict=True))
    random = from_expert(expert, "parts", parts_vlm_config(pretrained=False))
    words = lambda policy: policy.vlm.bert.embeddings.word_embeddings.weight  # noqa: E731
    assert not torch.equal(words(random), words(p))
    with torch.no_grad():
        assert p.predict_action_chunk(batch).shape == expert.predict_action_chunk(batch).shape


@pytest.mark.parametrize("family", ["idefics3", "parts"])
def test_checkpoint_round_trip_rebuilds_offline(expert, batch, tmp_path, family):
    p = from_expert(expert, family).eval()
    save_pretrained(p, tmp_path / "pretrained_model", {"note": "vita test"})
    q = load_pretrained(tmp_path / "pretrained_model")
    assert type(q).__name__ == "VitaPolicy" and q.config.family == family
    from vla_distill.train.vita import vlm_spec

    assert vlm_spec(q.config) == {"idefics3": "tiny:idefics3", "parts": "parts"}[family]  # what --vlm built it
    with torch.no_grad():
        assert torch.equal(p.predict_action_chunk(batch), q.predict_action_chunk(batch))


@pytest.mark.parametrize("family", ["parts", pytest.param("paligemma", marks=pytest.mark.slow)])
def test_an_acting_vlm_exports_to_onnx_and_runs_on_onnx_runtime(expert, annotated, tmp_path, family):
    """The prompt is tokenized on the host (prompt_ids), the batch axis stays dynamic, the graph reads only what the
    VLM and the state token read; export's own parity check covers one observation and a batch."""
    from vla_distill.deploy.export import export
    from vla_distill.models.backends import load_policy

    p = from_expert(expert, family).eval()
    save_pretrained(p, tmp_path / "vita" / "pretrained_model", {"dataset": str(annotated)})
    m = export(tmp_path / "vita", tmp_path / "bundle", "onnx-only", int8="none", n_observations=4, log=lambda *_: None)
    assert m["backends"] == ["onnx"] and m["parity"]["onnx"]["max_normalized"] < 1e-4
    onnx_p = load_policy(tmp_path / "bundle")
    from vla_distill.deploy.openpi_server import metadata_for

    assert metadata_for(onnx_p, "onnx")["action_shape"] == [expert.horizon, expert.action_dim]  # what serve sends
    frames, tasks = export_observations(p, annotated)
    batch = frames_to_batch(frames, p.input_keys, tasks)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_p.predict_action_chunk(batch).numpy(), p.predict_action_chunk(batch).numpy(),
                                   atol=1e-4)


def export_observations(policy, dataset, n: int = 3):
    from vla_distill.deploy.export import recorded_observations

    return recorded_observations(policy, dataset, n, seed=5)


def test_a_tiny_acting_vlm_runs_through_the_evaluator(expert, tmp_path):
    from vla_distill.eval.config import EvalConfig
    from vla_distill.eval.evaluate import evaluate

    save_pretrained(from_expert(expert, "paligemma").eval(), tmp_path / "vita" / "pretrained_model",
                    {"note": "vita eval"})
    info = evaluate(EvalConfig(policy=str(tmp_path / "vita"), out=str(tmp_path / "ev"), tasks=("reach-v3",), episodes=2,
                               max_steps=10, workers=1, videos=0, latency_steps=5))
    assert info["overall"]["n_episodes"] == 2 and info["policy"]["kind"] == "policy"
    assert info["policy"]["image_keys"] == list(expert.config.image_keys) and info["policy"]["latency_ms_p50"] > 0


@pytest.mark.slow
def test_vita_train_cli_runs_both_stages_and_resumes(tiny_student, annotated, tmp_path):
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vla_distill.cli", "vita-train", "--dataset", str(annotated),
                               "--batch-size", "4", "--log-every", "2", *args], capture_output=True, text=True,
                               timeout=300)

    align = cli("--expert", str(tiny_student), "--vlm", "tiny:qwen2_vl", "--stage", "align", "--steps", "4",
                "--save-every", "2", "--val-fraction", "0.5", "--out", str(tmp_path / "align"))
    assert align.returncode == 0, align.stderr[-2000:]
    assert "VITA-VLA align (qwen2_vl)" in align.stderr and "trainable" in align.stderr
    rows = (tmp_path / "align" / "metrics.jsonl").read_text().splitlines()
    val = [json.loads(line) for line in rows if '"val"' in line]
    assert [r["step"] for r in val] == [2, 4] and all(len(r["action_mae_per_dim"]) == 4 for r in val)
    assert "step 4: loss" in align.stderr and "action_mae_per_dim [" in align.stderr
    ft = cli("--init", str(tmp_path / "align"), "--stage", "finetune", "--steps", "2", "--save-every", "2",
             "--out", str(tmp_path / "ft"))
    assert ft.returncode == 0, ft.stderr[-2000:]
    more = cli("--init", str(tmp_path / "align"), "--stage", "finetune", "--steps", "4", "--save-every", "2",
               "--out", str(tmp_path / "ft"), "--resume")
    assert more.returncode == 0 and "resuming at step 2 of 4" in more.stderr, more.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "arm_smooth_l1" in r] == [2, 4]
    prov = json.loads((tmp_path / "ft" / "checkpoints" / "last" / "pretrained_model" / "provenance.json").read_text())
    assert prov["stage"] == "finetune" and prov["family"] == "qwen2_vl" and prov["vlm"] == "tiny:qwen2_vl"  # --init's
    assert load_pretrained(tmp_path / "ft").config.family == "qwen2_vl"
    bad = cli("--stage", "finetune", "--steps", "2", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--init" in bad.stderr
    bad = cli("--expert", str(tiny_student), "--vlm", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad2"))
    assert bad.returncode == 2 and "config.json" in bad.stderr and not (tmp_path / "bad2").exists()


def test_the_reused_decoder_can_learn_slower_than_the_language_model(expert):
    from vla_distill.train.config import VitaTrainConfig
    from vla_distill.train.fit import Job, _optimizer

    p = from_expert(expert, "paligemma")
    trainable = set(p.set_stage("finetune"))
    params = [(n, q) for n, q in p.named_parameters() if n in trainable]
    job = Job(policy=p, params=params, stream=None, to_batch=None, loss=None, validate=None, provenance={},
              describe="", lr_scales=(("expert.action_head", 0.1),))
    cfg = VitaTrainConfig(dataset="d", out="o", stage="finetune", expert="e", decoder_lr_scale=0.1)
    opt = _optimizer(job, cfg)
    scale = {id(q): g["lr_scale"] for g in opt.param_groups for q in g["params"]}
    assert {scale[id(q)] for n, q in params if n.startswith("expert.action_head")} == {0.1}
    assert {scale[id(q)] for n, q in params if not n.startswith("expert.action_head")} == {1.0}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


def test_lora_finetune_trains_only_language_adapters(expert, batch):
    p = from_expert(expert, "paligemma").eval()
    q = p.with_lora(4).eval()
    with torch.no_grad():  # LoRA's B starts at zero: the same function
        assert torch.allclose(p.predict_action_chunk(batch), q.predict_action_chunk(batch), atol=1e-6)
    names = set(q.set_stage("finetune"))
    lora = {n for n in names if "lora_" in n}
    assert lora and all(n.startswith("vlm.model.language_model") for n in lora)
    assert not any(n.startswith("vlm.") and "lora_" not in n for n in names)  # the base weights stay frozen
    loss, _ = q(batch, "finetune")
    loss.backward()
    assert all(q.get_parameter(n).grad is not None for n in lora if "lora_B" in n)


def test_stage_one_aligns_to_cached_expert_features_and_stage_two_reads_only_the_vlm_camera(annotated, tmp_path):
    """A frozen pretrained expert's features come from the feature cache in stage 1 (what the expert computes from the
    pixels, to float16), and stage 2 decodes no camera but the VLM's."""
    from torch.utils.data import default_collate

    from vla_distill.data.dataset import RobotDataset
    from vla_distill.train.config import TrainConfig, VitaTrainConfig
    from vla_distill.train.fit import training_episodes
    from vla_distill.train.student import train
    from vla_distill.train.views import make_views, policy_batch
    from vla_distill.train.vita import build_vita, vita_views
    from vla_distill.types import feature_key

    run = tmp_path / "lite0"
    train(TrainConfig(dataset=str(annotated), out=str(run), preset="tiny", vision="efficientnet-lite0", steps=2,
                      batch_size=4, warmup_steps=1, save_every=2, log_every=1, val_batches=1))
    ds, target = RobotDataset(annotated), "action.teacher"
    cfg = VitaTrainConfig(dataset=str(annotated), out=str(tmp_path / "v"), expert=str(run), vlm="tiny:paligemma")
    policy = build_vita(cfg).eval()
    cams, episodes = policy.expert.config.image_keys, training_episodes(ds, cfg)

    def batch(views):
        return policy_batch(default_collate([views.train[i] for i in (3, 40)]), views)

    cached = batch(vita_views(ds, cfg, policy, target, *episodes))
    assert all(feature_key(k) in cached for k in cams)
    pixels = batch(make_views(ds, [*policy.input_keys, target], target, policy.horizon, *episodes))
    assert not any(feature_key(k) in pixels for k in cams)
    torch.testing.assert_close(policy.expert_features(cached), policy.expert_features(pixels), atol=3e-2, rtol=3e-2)
    finetune = VitaTrainConfig(**{**cfg.to_dict(), "stage": "finetune"})
    read = set(batch(vita_views(ds, finetune, policy, target, *episodes)))
    assert policy.config.image_key in read and not read & ({*cams, *map(feature_key, cams)} - {policy.config.image_key})


def test_a_validated_stage_logs_and_prints_the_error_per_action_dimension(tiny_student, annotated, tmp_path, capsys):
    import json

    from vla_distill.train.config import VitaTrainConfig
    from vla_distill.train.vita import vita_train

    out = tmp_path / "align"
    vita_train(VitaTrainConfig(dataset=str(annotated), out=str(out), expert=str(tiny_student), vlm="tiny:paligemma",
                               steps=2, batch_size=4, save_every=2, log_every=1, val_fraction=0.5, val_batches=1))
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    assert [r["step"] for r in val] == [2] and len(val[0]["action_mae_per_dim"]) == 4
    assert "action_mae_per_dim [" in capsys.readouterr().err


def test_the_parts_vlm_sees_every_camera_its_expert_reads_when_asked(expert, batch, annotated, tmp_path):
    """`--vlm-cameras all`: each camera's image tokens follow the last's, the second camera changes the action (it
    does not for a one-camera VLM), and the policy round-trips a checkpoint and exports to ONNX with both."""
    from vla_distill.deploy.export import export
    from vla_distill.models.backends import load_policy
    from vla_distill.models.parts_vlm import n_image_tokens

    cams = expert.config.image_keys
    assert len(cams) == 2, "the fixture's expert reads two cameras"
    one, both = from_expert(expert, "parts").eval(), from_expert(expert, "parts", all_cameras=True).eval()
    assert both.config.vlm_image_keys == cams and one.config.vlm_image_keys == cams[:1]
    n = n_image_tokens(both.config.vlm_image_size, both.config.vlm_config)
    assert both._vlm_inputs(batch)["input_ids"].shape[1] == one._vlm_inputs(batch)["input_ids"].shape[1] + n
    both.load_state_dict(one.state_dict())  # the same weights: only what they look at differs
    other = {**batch, cams[1]: batch[cams[1]].flip(0)}
    with torch.no_grad():
        assert torch.equal(one.predict_action_chunk(batch), one.predict_action_chunk(other))
        assert not torch.allclose(both.predict_action_chunk(batch), both.predict_action_chunk(other))
    save_pretrained(both, tmp_path / "vita" / "pretrained_model", {"dataset": str(annotated)})
    assert load_pretrained(tmp_path / "vita" / "pretrained_model").config.vlm_image_keys == cams
    m = export(tmp_path / "vita", tmp_path / "bundle", "onnx-only", int8="none", n_observations=4, log=lambda *_: None)
    assert m["parity"]["onnx"]["max_normalized"] < 1e-4
    frames, tasks = export_observations(both, annotated)
    b = frames_to_batch(frames, both.input_keys, tasks)
    with torch.no_grad():
        np.testing.assert_allclose(load_policy(tmp_path / "bundle").predict_action_chunk(b).numpy(),
                                   both.predict_action_chunk(b).numpy(), atol=1e-4)


def test_only_the_parts_vlm_reads_more_than_one_camera():
    from vla_distill.models.vita import VitaConfig
    from vla_distill.train.config import VitaTrainConfig

    with pytest.raises(ValueError, match="extra_image_keys"):
        VitaConfig(family="paligemma", extra_image_keys=("observation.images.gripper",))
    with pytest.raises(ValueError, match="vlm_cameras"):
        VitaTrainConfig(dataset="d", out="o", expert="e", vlm="tiny:paligemma", vlm_cameras="all")
