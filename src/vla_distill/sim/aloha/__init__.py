"""ALOHA bimanual (gym-aloha's scenes), where the [aloha] extra is installed: env.py (the environment, lerobot's
aloha layout), expert.py (the scripted bimanual expert, inverse kinematics on the robot's own model), simulator.py
(its registry entry)."""
