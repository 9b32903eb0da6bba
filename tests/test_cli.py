"""The command line: every stage's flags declare, and config-backed flags restate no default of their own."""

from __future__ import annotations

import dataclasses

import pytest

from vla_distill.cli import STAGES, build_parser, main


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0 and f"usage: vla-distill {stage}" in capsys.readouterr().out


def _config_fields(stage: str) -> set[str]:
    from vla_distill.annotate.config import AnnotateConfig
    from vla_distill.annotate.vlm import VLMConfig
    from vla_distill.collect.config import CollectConfig
    from vla_distill.deploy.config import LoopConfig
    from vla_distill.eval.config import EvalConfig
    from vla_distill.models.losses import LossConfig
    from vla_distill.sim.base import CameraConfig
    from vla_distill.train.config import TrainConfig, VitaTrainConfig

    classes = {"train": (TrainConfig, LossConfig), "vita-train": (VitaTrainConfig,), "eval": (EvalConfig,),
               "run": (LoopConfig,), "annotate": (AnnotateConfig, VLMConfig), "collect": (CollectConfig, CameraConfig)}
    return {f.name for cls in classes[stage] for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("argv, required", [
    (["train", "--dataset", "d", "--out", "o"], {"dataset", "out"}),
    (["vita-train", "--dataset", "d", "--out", "o"], {"dataset", "out"}),
    (["eval", "--policy", "scripted", "--tasks", "reach-v3", "--out", "o"], {"policy", "out"}),
    (["run", "--policy", "p", "--tasks", "reach-v3"], set()),
    (["annotate", "--dataset", "d", "--out", "o"], set()),
    (["collect", "--tasks", "reach-v3", "--out", "o"], set()),
])
def test_config_defaults_come_from_the_dataclasses(argv, required):
    args = build_parser(argv[0]).parse_args(argv)
    # Only what was typed reaches the config: any other field in the namespace would be a default restated here.
    assert set(vars(args)) & _config_fields(argv[0]) == required


def test_flags_reach_the_config_under_their_field_names():
    from vla_distill.models.losses import LossConfig
    from vla_distill.train.config import TrainConfig

    args = build_parser("train").parse_args(["train", "--dataset", "d", "--out", "o", "--ema", "0.99", "--keep-dropped",
                                             "--cameras", "a, b", "--dim-weights", "1,2", "--action-loss", "l1",
                                             "--vision", "efficientnet-lite0", "--no-feature-cache",
                                             "--aux-state", "observation.environment_state", "--aux-state-weight",
                                             "0.5"])
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    loss = LossConfig(**{k: v for k, v in vars(args).items() if k in LossConfig.__dataclass_fields__})
    assert cfg.ema_decay == 0.99 and cfg.drop_audited is False and cfg.cameras == ("a", "b") and cfg.steps == 2000
    assert cfg.vision == "efficientnet-lite0" and cfg.feature_cache is False
    assert cfg.aux_state == "observation.environment_state" and loss.aux_state_weight == 0.5
    assert loss.dim_weights == (1.0, 2.0) and loss.action == "l1" and loss.phase_weight == LossConfig().phase_weight


def test_a_recipe_sets_the_stage_flags_and_the_command_line_overrides_them():
    """--recipe NAME gives the benchmark's settings (the libero recipe: K = 5, the frozen encoder, a DAgger round's
    rollout chunks counted on their first step, replanning every step); a flag given beside it wins; an unknown name
    is a one-line error."""
    from vla_distill.cli import _run_config, build_parser
    from vla_distill.errors import ConfigError
    from vla_distill.train.config import TrainConfig

    def config(*flags: str) -> TrainConfig:
        args = build_parser("train").parse_args(["train", "--dataset", "d", "--out", "o", *flags])
        return _run_config(args, TrainConfig)

    libero = config("--recipe", "libero")
    assert (libero.horizon, libero.vision, libero.rollout_steps) == (5, "efficientnet-lite0", 1)
    assert libero.n_action_steps == 1
    over = config("--recipe", "libero", "--rollout-steps", "0", "--horizon", "3")
    assert (over.horizon, over.rollout_steps, over.vision) == (3, 0, "efficientnet-lite0")
    assert config().rollout_steps == 0 and config().horizon == 1
    with pytest.raises(ConfigError, match="did you mean 'libero'"):
        config("--recipe", "lbero")
