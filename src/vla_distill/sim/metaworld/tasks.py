"""MetaWorld v3 as a benchmark: task names, groups, one natural-language instruction per task, held-out seeds. Pure
data: the simulator's description (simulator.py) and its environment (env.py) read it.

Difficulty groups follow lerobot's `envs/metaworld_config.json` (easy 28 / medium 11 / hard 6 / very_hard 5);
mt10 and mt50 follow metaworld's own benchmark lists.
Seeds: collection draws placements from seeds `seed * 1_000_003 + task_pos * 10_007 + attempt` (below 2^31 for any
--seed under 2,000); evaluation draws from 2^31 upwards, so its placements are never those of the demonstrations.
"""

from __future__ import annotations

from vla_distill.errors import ConfigError, did_you_mean

FPS = 80  # MetaWorld steps at dt = 0.0025 s x frame_skip 5 = 12.5 ms, as lerobot records it
MAX_STEPS = 500
EVAL_SEED_BASE = 2**31
# Camera aliases -> MuJoCo camera names in metaworld's sawyer scene.
CAMERAS = {"corner2": "corner2", "gripper": "gripperPOV", "corner": "corner", "corner3": "corner3",
           "topview": "topview",
           "behind_gripper": "behindGripper"}
DEFAULT_CAMERAS = ("corner2", "gripper")

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "rotate the faucet clockwise to close it",
    "faucet-open-v3": "rotate the faucet counter-clockwise to open it",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick up the puck from the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "plate-slide-back-side-v3": "slide the plate back sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck past the wall to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "push the window closed",
    "window-open-v3": "push the window open",
}

GROUPS: dict[str, list[str]] = {
    "easy": [
        "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-wall-v3",
        "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3", "door-unlock-v3",
        "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3", "handle-press-v3",
        "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
        "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
        "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
    ],
    "medium": [
        "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3", "hammer-v3",
        "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3",
    ],
    "hard": ["assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"],
    "very_hard": ["shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"],
    "mt10": [
        "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
    ],
    "mt50": sorted(INSTRUCTIONS),
}


def difficulty_of(task: str) -> str:
    return next(g for g in ("easy", "medium", "hard", "very_hard") if task in GROUPS[g])


def resolve_tasks(spec: str) -> list[str]:
    """'reach-v3,push-v3' | 'mt10' | 'mt50' | 'easy' | ... -> task names, in order, without repeats."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in GROUPS:
            names += GROUPS[part]
        elif part in INSTRUCTIONS:
            names.append(part)
        elif f"{part}-v3" in INSTRUCTIONS:
            names.append(f"{part}-v3")
        else:
            valid = sorted(INSTRUCTIONS) + sorted(GROUPS)
            raise ConfigError(f"unknown task '{part}'{did_you_mean(part, valid, n=3)}; valid: "
                              f"{', '.join(sorted(GROUPS))} or a task name ({', '.join(sorted(INSTRUCTIONS))})",
                              field="tasks")
    if not names:
        raise ConfigError("no task given", field="tasks")
    return list(dict.fromkeys(names))
