"""The scripted bimanual ALOHA expert: from the privileged state alone it picks each arm's next gripper pose (where
the object is, what each gripper holds) and turns it into joint targets by inverse kinematics on the robot's own
MJCF, so it answers from any state (DART noise, DAgger relabelling, annotate --teacher scripted).

Transfer cube: the right arm comes down on the cube with its gripper pitched 60 degrees below horizontal, shuts, and
carries it to the meeting point; the left arm waits beside it, turned 90 degrees about its own axis so that its
fingers close on the cube's top and bottom while the right's hold its sides; once the left holds, the right lets go
and backs away. (The orientations and the meeting point are those of ACT's scripted policy, a fact of this scene.)
Insertion: the right arm grips the peg straight down, coming down slowly (a fast arm overshoots and presses it into
the table), the left the socket pitched; the socket waits at SOCKET_AT with its axis turned onto x, the right hand
turns the peg's axis onto the socket's (the pads hold each box at one line and it pivots there), lines the peg's tip
up on that axis PRE_INSERT out and pushes it in when the tip is within ALIGNED of the axis and the two are PARALLEL_DEG
from parallel. An object counts as held while the fingers are stopped by it, not by the contact flag alone, which
drops for single steps while the peg is carried.
Each step aims a gripper at most MAX_STEP towards its goal; the joint targets are the IK solution from the measured
joints (a pushed arm is corrected from where it is) plus gravity feed-forward: the scene's position actuators are
soft (kp 10-1,600) against joint friction of 30-60 N m, and sag millimetres short of any target without it.

Shapes: env_state (30,) ENV_STATE_NAMES -> action (14,) MOTORS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_distill.errors import ConfigError, DatasetError
from vla_distill.sim.aloha.env import (
    ARM_JOINTS,
    ARMS,
    CONTACT,
    ENV_STATE_NAMES,
    OBJECT0,
    OBJECT1,
    START_ARM_POSE,
    STATE_DIM,
    TASKS,
    load_model,
)

GRIP_POINT = np.array([0.13, 0.0, 0.0])  # between the fingertips, in the gripper link's frame
MAX_STEP = 0.02  # m: how far ahead of the gripper its next target lies (the arm lags it by about half)
MAX_TURN = 0.06  # rad of gripper rotation per step
PRECISE = 2.5  # the joints' friction leaves the gripper millimetres short of a target: aim past it to halve that
MEET = np.array([0.0, 0.5, 0.25])  # where the cube changes hands
LIFTED = 0.08  # m: the cube's centre above this is off the table
ABOVE = 0.08  # m above the cube where the right gripper lines up before coming down
GRASP_DZ = 0.012  # m: the grip point this far above the cube's centre when it shuts (the fingers clear the table)
NEAR = 0.012  # m: a gripper this close to its goal has arrived
POSTURE_GAIN = 0.1  # of the way back to the home posture per IK iteration, in the task's null space
HOLDING = 0.7  # a gripper shut on the 4 cm cube reads ~0.61, open 1.0: below this and touching it, it holds
PEG_HOLDING, SOCKET_HOLDING = 0.5, 0.75  # the 2 cm peg, the 4.4 cm socket
EMPTY = 0.15  # a gripper shut on nothing reads below this
HALF_LENGTH = 0.06  # m: the peg's and the socket's half length
PEG_GRASP_DZ = 0.016  # m: straight down, the fingertips 2.4 cm below the grip point stop just above the table
PEG_DESCENT = 0.008  # m per step down onto the peg: faster, the arm overshoots and the fingers press it into the table
SOCKET_AT = np.array([-0.05, 0.5, 0.15])  # where the socket waits for the peg
PRE_INSERT = 0.15  # m: the peg's centre this far along x from the socket's, lined up, before it goes in
INSERTED = 0.08  # m: ... and when it is in (its tip 2 cm past the pin's end)
ALIGNED = 0.006  # m: the peg's tip this close to the socket's axis before it goes in
PARALLEL_DEG = 5.0  # ... and its axis this close to parallel with the socket's (8 mm of clearance over 2 cm in)
OPEN, SHUT = 1.0, 0.0


@dataclass(frozen=True)
class ArmGoal:
    """Where one gripper goes next: its grip point (3,), its orientation (3, 3) and the gripper (0 shut .. 1 open);
    `stage` names what the arm is doing (the expert's own phase, PHASES_4's vocabulary)."""

    position: np.ndarray
    rotation: np.ndarray
    gripper: float
    stage: str
    gain: float = 1.0  # the target lies this many times the remaining error ahead (PRECISE where millimetres count)
    max_step: float = MAX_STEP  # m: how far ahead of the gripper its next target may lie (its speed)


class ArmIK:
    """Damped least-squares IK of one arm's grip point and orientation on the scene's own model (a private copy of
    its data, so the environment's is never touched)."""

    def __init__(self, model, arm: str):
        import mujoco

        self.m, self.d = model, mujoco.MjData(model)
        self.body = model.body(f"vx300s_{arm}/gripper_link").id
        joints = [model.joint(f"vx300s_{arm}/{j}").id for j in ARM_JOINTS]
        self.qadr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dadr = np.array([model.jnt_dofadr[j] for j in joints])
        self.lo, self.hi = model.jnt_range[joints, 0], model.jnt_range[joints, 1]
        self.home = START_ARM_POSE[:6]
        actuators = [next(a for a in range(model.nu) if model.actuator_trnid[a, 0] == j) for j in joints]
        self.kp = model.actuator_gainprm[actuators, 0].copy()

    def pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(6,) arm joints -> grip point (3,), gripper orientation (3, 3)."""
        import mujoco

        self.d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.m, self.d)
        r = self.d.xmat[self.body].reshape(3, 3).copy()
        return self.d.xpos[self.body] + r @ GRIP_POINT, r

    def gravity_offset(self, q: np.ndarray) -> np.ndarray:
        """(6,) what to add to joint targets q so that the position actuators hold the arm there against gravity: a
        P actuator pushes kp x (target - q), so without it the arm settles below its targets (5-10 mm at the
        gripper, more than the insertion's clearance)."""
        import mujoco

        self.pose(q)
        mujoco.mj_comPos(self.m, self.d)
        self.d.qvel[:] = 0
        mujoco.mj_comVel(self.m, self.d)
        bias = np.zeros(self.m.nv)
        mujoco.mj_rne(self.m, self.d, 0, bias)
        return bias[self.dadr] / self.kp

    def solve(self, q: np.ndarray, position: np.ndarray, rotation: np.ndarray, iters: int = 12) -> np.ndarray:
        """(6,) joints that put the grip point at `position` with `rotation`, starting from q (the nearest solution)."""
        import mujoco

        q = q.copy()
        jp, jr = np.zeros((3, self.m.nv)), np.zeros((3, self.m.nv))
        quat, err_r = np.zeros(4), np.zeros(3)
        for _ in range(iters):
            p, r = self.pose(q)
            mujoco.mj_comPos(self.m, self.d)
            mujoco.mju_mat2Quat(quat, (rotation @ r.T).reshape(-1))
            mujoco.mju_quat2Vel(err_r, quat, 1.0)
            err = np.concatenate([position - p, 0.3 * err_r])
            if np.linalg.norm(err[:3]) < 1e-4 and np.linalg.norm(err_r) < 1e-3:
                break
            mujoco.mj_jac(self.m, self.d, jp, jr, p, self.body)
            jac = np.vstack([jp[:, self.dadr], 0.3 * jr[:, self.dadr]])
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + 1e-4 * np.eye(6))
            # what the task leaves free drifts back to the home posture: the wrist would otherwise wind up
            # (forearm roll and wrist rotate turning together by half a turn) and meet its limits
            posture = (np.eye(6) - pinv @ jac) @ (POSTURE_GAIN * (self.home - q))
            q = np.clip(q + pinv @ err + posture, self.lo, self.hi)
        return q


def rotated(r: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """r turned by `angle` about `axis` given in r's own frame."""
    import mujoco

    quat, m = np.zeros(4), np.zeros(9)
    mujoco.mju_axisAngle2Quat(quat, np.asarray(axis, np.float64), angle)
    mujoco.mju_quat2Mat(m, quat)
    return r @ m.reshape(3, 3)


def matrix_of(quat: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a (w, x, y, z) quaternion."""
    import mujoco

    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, np.asarray(quat, np.float64))
    return r.reshape(3, 3)


def yaw_of(quat: np.ndarray, period: float = 2 * np.pi) -> float:
    """The heading of an object's x axis about the vertical (w, x, y, z quaternion), wrapped to +-period/2: a
    box's grasp repeats every half turn, a cube's every quarter."""
    r = matrix_of(quat)
    yaw = float(np.arctan2(r[1, 0], r[0, 0]))
    return (yaw + period / 2) % period - period / 2


def about_z(angle: float, r: np.ndarray) -> np.ndarray:
    """r turned by `angle` about the world's vertical."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ r


def toward(current: np.ndarray, goal: np.ndarray, limit: float) -> np.ndarray:
    step = goal - current
    n = float(np.linalg.norm(step))
    return goal if n <= limit else current + step * (limit / n)


def turned_toward(current: np.ndarray, goal: np.ndarray, limit: float) -> np.ndarray:
    """An orientation at most `limit` rad from `current` on the way to `goal`."""
    import mujoco

    quat, vel = np.zeros(4), np.zeros(3)
    mujoco.mju_mat2Quat(quat, (goal @ current.T).reshape(-1))
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    angle = float(np.linalg.norm(vel))
    if angle <= limit:
        return goal
    return rotated(np.eye(3), vel / angle, limit) @ current


class AlohaExpert:
    """One task's expert (sim.base.Expert): env_state (30,) -> action (14,)."""

    def __init__(self, task: str):
        if task not in TASKS:
            raise ConfigError(f"no scripted expert for {task!r}; ALOHA tasks: {', '.join(TASKS)}", field="teacher")
        self.task = task
        model = load_model(task)
        self.ik = {arm: ArmIK(model, arm) for arm in ARMS}
        home = {arm: self.ik[arm].pose(START_ARM_POSE[8 * i:8 * i + 6])[1] for i, arm in enumerate(ARMS)}
        self.pick = rotated(home["right"], [0, 1, 0], np.deg2rad(60))  # pitched down towards the cube
        self.receive = rotated(home["left"], [1, 0, 0], np.deg2rad(90))  # fingers above and below the cube
        self.pick_left = rotated(home["left"], [0, 1, 0], np.deg2rad(60))  # the right's pick, mirrored
        # straight down for the 2 cm peg: the fingers' bottom edges level, a 6 cm strip of each pad on its sides
        # (pitched, only a corner of each pad gets below the top of something that low, and it slips when lifted)
        self.pick_peg = rotated(home["right"], [0, 1, 0], np.deg2rad(90))

    def __call__(self, env_state: np.ndarray) -> np.ndarray:
        s = np.asarray(env_state, np.float64)
        if s.shape != (len(ENV_STATE_NAMES),):
            raise DatasetError(f"the ALOHA expert reads a {len(ENV_STATE_NAMES)}-d environment state, got {s.shape}",
                               field="observation.environment_state")
        action = np.zeros(STATE_DIM, np.float32)
        for i, (arm, goal) in enumerate(zip(ARMS, self.decide(s))):
            q = s[7 * i:7 * i + 6]
            p, r = self.ik[arm].pose(q)
            ahead = toward(p, p + goal.gain * (goal.position - p), goal.max_step)
            target = self.ik[arm].solve(q, ahead, turned_toward(r, goal.rotation, MAX_TURN))
            action[7 * i:7 * i + 6] = np.clip(target + self.ik[arm].gravity_offset(target), self.ik[arm].lo,
                                              self.ik[arm].hi)
            action[7 * i + 6] = goal.gripper
        return action

    def decide(self, s: np.ndarray) -> tuple[ArmGoal, ArmGoal]:
        """(left, right) goals from the state: what each arm does next and why."""
        return self._transfer(s) if self.task == "transfer_cube" else self._insertion(s)

    def _hands(self, s: np.ndarray) -> tuple[dict, dict, dict]:
        """Each arm's grip point (3,), gripper orientation (3, 3) and gripper opening from the state."""
        poses = {arm: self.ik[arm].pose(s[7 * i:7 * i + 6]) for i, arm in enumerate(ARMS)}
        return ({arm: p for arm, (p, _) in poses.items()}, {arm: r for arm, (_, r) in poses.items()},
                {arm: s[7 * i + 6] for i, arm in enumerate(ARMS)})

    def _pick(self, grip: np.ndarray, obj: np.ndarray, rotation: np.ndarray, dz: float = GRASP_DZ,
              descent: float = MAX_STEP) -> ArmGoal:
        """Line up above the object, come down on it open (at most `descent` per step), shut at the grasp point (dz
        above its centre)."""
        at, above = obj + [0, 0, dz], obj + [0, 0, ABOVE]
        if np.linalg.norm(grip - at) < NEAR:
            return ArmGoal(at, rotation, SHUT, "grasp", max_step=descent)
        if np.linalg.norm((grip - at)[:2]) < NEAR and grip[2] <= above[2] + NEAR:
            return ArmGoal(at, rotation, OPEN, "approach", max_step=descent)
        return ArmGoal(above, rotation, OPEN, "approach")

    def _transfer(self, s: np.ndarray) -> tuple[ArmGoal, ArmGoal]:
        cube = s[OBJECT0:OBJECT0 + 3]
        left_touch, right_touch = s[CONTACT] > 0.5, s[CONTACT + 1] > 0.5
        grip, _, gripper = self._hands(s)
        lifted = cube[2] > LIFTED
        left_holds = left_touch and gripper["left"] < HOLDING and lifted
        right_holds = right_touch and gripper["right"] < HOLDING and np.linalg.norm(grip["right"] - cube) < 0.04
        if left_holds:  # the right lets go, then backs away
            right = ArmGoal(MEET + [0.15, 0, 0.05] if gripper["right"] > 0.8 else grip["right"], self.pick, OPEN,
                            "release")
        elif right_holds:
            right = ArmGoal(grip["right"] + (MEET - cube), self.pick, SHUT, "transport")
        else:
            right = self._pick(grip["right"], cube, self.pick)
        ready = right_holds and lifted and np.linalg.norm(cube - MEET) < 0.02
        if left_holds:
            left = ArmGoal(MEET + [-0.1, 0, 0] if not right_touch else grip["left"], self.receive, SHUT, "transport")
        elif ready and np.linalg.norm(grip["left"] - cube) < NEAR:
            left = ArmGoal(cube, self.receive, SHUT, "grasp")
        elif ready:
            left = ArmGoal(cube, self.receive, OPEN, "approach")
        else:
            left = ArmGoal(MEET + [-0.12, 0, 0], self.receive, OPEN, "approach")
        return left, right

    def _insertion(self, s: np.ndarray) -> tuple[ArmGoal, ArmGoal]:
        """Each arm picks its object (the right the peg, the left the socket), both lift to the meeting height, the
        socket waits there with its axis turned onto x, the peg's axis is turned onto the socket's, and the peg lines
        up on that axis PRE_INSERT out and goes in along it until it meets the pin."""
        peg, socket = s[OBJECT0:OBJECT0 + 3], s[OBJECT1:OBJECT1 + 3]
        grip, rot, gripper = self._hands(s)
        # held: the fingers stopped by the object between them (not shut on nothing), touching it or, once it is off
        # the table, not: the contact flag drops for single steps while the peg is carried, and a re-pick opens the
        # hand on it
        peg_axis, socket_axis = long_axis(s[OBJECT0 + 3:OBJECT0 + 7]), long_axis(s[OBJECT1 + 3:OBJECT1 + 7])
        holds = {arm: (touch or obj[2] > LIFTED) and EMPTY < gripper[arm] < most and between(grip[arm], obj, axis)
                 for arm, touch, obj, axis, most in (("left", s[CONTACT] > 0.5, socket, socket_axis, SOCKET_HOLDING),
                                                     ("right", s[CONTACT + 1] > 0.5, peg, peg_axis, PEG_HOLDING))}
        # the fingers close across each object's long axis however it lies on the table
        peg_yaw, socket_yaw = yaw_of(s[OBJECT0 + 3:OBJECT0 + 7], np.pi), yaw_of(s[OBJECT1 + 3:OBJECT1 + 7], np.pi)
        # once held, each object's long axis (towards +x: the socket's mouth, the peg's back) is steered in full 3-d,
        # not by heading alone: the pads hold a box at one line and it pivots there when lifted, so a peg or socket
        # pitched a few degrees hits the rim (8 mm of clearance, 2 cm of travel to the pin)
        if not holds["left"]:
            left = self._pick(grip["left"], socket, about_z(socket_yaw, self.pick_left))
        else:
            left = ArmGoal(grip["left"] + (SOCKET_AT - socket), turn_onto(socket_axis, X_AXIS) @ rot["left"], SHUT,
                           "transport", PRECISE)
        if not holds["right"]:
            return left, self._pick(grip["right"], peg, about_z(peg_yaw, self.pick_peg), PEG_GRASP_DZ, PEG_DESCENT)
        lined_up = holds["left"] and socket[2] > LIFTED and np.linalg.norm(socket - SOCKET_AT) < 0.01
        tip = peg - HALF_LENGTH * peg_axis  # the end that goes in
        along = float((tip - socket) @ socket_axis)
        off_axis = np.linalg.norm(tip - socket - along * socket_axis)
        parallel = float(peg_axis @ socket_axis) > np.cos(np.deg2rad(PARALLEL_DEG))
        aligned = lined_up and off_axis < ALIGNED and parallel and along < PRE_INSERT - HALF_LENGTH + 0.01
        goal = socket + (INSERTED if aligned else PRE_INSERT) * socket_axis
        if not lined_up:  # lift and wait beside the meeting point
            goal = SOCKET_AT + [PRE_INSERT + 0.05, 0, 0]
        aim = turn_onto(peg_axis, socket_axis if lined_up else X_AXIS) @ rot["right"]
        return left, ArmGoal(grip["right"] + (goal - peg), aim, SHUT, "transport", PRECISE)


X_AXIS = np.array([1.0, 0.0, 0.0])


def long_axis(quat: np.ndarray) -> np.ndarray:
    """(3,) unit world direction of an object's own x axis (a peg's and a socket's length), signed towards +x."""
    axis = matrix_of(quat)[:, 0]
    return axis if axis[0] >= 0 else -axis


def between(grip: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> bool:
    """A grip point within reach of a 12 cm box's axis line and along its length: the box may slide along its
    length in the fingers (pushed against the socket's rim, the peg does) and is still held."""
    along = float((grip - centre) @ axis)
    return abs(along) < HALF_LENGTH and np.linalg.norm(grip - centre - along * axis) < 0.03


def turn_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3) the shortest world rotation taking unit direction a onto b."""
    cross = np.cross(a, b)
    sin, cos = float(np.linalg.norm(cross)), float(a @ b)
    if sin < 1e-9:
        return np.eye(3)
    return rotated(np.eye(3), cross / sin, float(np.arctan2(sin, cos)))
