"""Training jobs through one loop: the VLA-AD student (student.py) and the VITA-VLA stages (vita.py), both run by
fit.py with configs from config.py; lerobot-layout checkpoints (checkpoint.py)."""
