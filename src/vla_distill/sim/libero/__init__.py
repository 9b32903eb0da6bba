"""LIBERO (the VLA-AD paper's benchmark), where its package and scene assets are installed: tasks.py (suites, task
names, step limits), env.py (the environment, openpi's and lerobot's conventions), simulator.py (its registry entry)."""
