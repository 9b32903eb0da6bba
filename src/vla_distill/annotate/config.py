"""`vla-distill annotate`'s configuration (annotate/annotate.py runs it): the teacher, where phases and direction cues
come from, the cue windows, the text encoder, the VLM, and the roles of a robot's state where no layout says them."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_distill.annotate import directions as dirs
from vla_distill.annotate.phases import PhaseConfig
from vla_distill.annotate.vlm import VLMConfig
from vla_distill.errors import ConfigError
from vla_distill.types import TAXONOMIES

SOURCES = ("kinematic", "vlm", "none")


@dataclass(frozen=True)
class AnnotateConfig:
    teacher: str = "scripted"
    teacher_options: tuple[tuple[str, str], ...] = ()
    phases: str = "kinematic"
    taxonomy: str = "4"
    directions: str = "kinematic"
    window: int = 8
    stride: int = 4
    text_encoder: str = ""  # "" = bundled all-MiniLM-L6-v2; else a local sentence-transformers directory
    vlm: VLMConfig | None = None
    vlm_camera: str = ""  # "" = the dataset's first camera
    vlm_cache: str = ""  # "" = $VLA_DISTILL_CACHE/vlm.sqlite (kept across runs: a rerun costs nothing)
    audit: bool = True
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    # observation.state's roles where neither a simulator's layout nor the feature names give them (sim.layout)
    state_map: str = ""  # e.g. "ee=0:3,gripper=6", "joints=0:5,gripper=5"
    robot_model: str = ""  # MJCF or URDF: the end effector by forward kinematics of a joint-space arm
    ee_frame: str = ""  # its site or body
    joint_units: str = "deg"  # sim.robot_model.JOINT_UNITS

    def __post_init__(self):
        for name in ("phases", "directions"):
            if getattr(self, name) not in SOURCES:
                raise ConfigError(f"{getattr(self, name)!r} is not one of {SOURCES}", field=name)
        if self.taxonomy not in TAXONOMIES:
            raise ConfigError(f"{self.taxonomy!r} is not one of {sorted(TAXONOMIES)}", field="taxonomy")
        if "vlm" in (self.phases, self.directions) and self.vlm is None:
            raise ConfigError("phases or directions from the VLM need --vlm-url and --vlm-model", field="vlm")
        dirs.DirectionConfig(window=self.window, stride=self.stride)

    @property
    def uses_vlm(self) -> bool:
        return self.vlm is not None and "vlm" in (self.phases, self.directions)

    @property
    def cue_config(self) -> dirs.DirectionConfig:
        return dirs.DirectionConfig(window=self.window, stride=self.stride)
