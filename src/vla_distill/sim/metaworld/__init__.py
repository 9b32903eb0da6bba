"""MetaWorld v3 (the embedded benchmark): tasks.py (names, groups, instructions, seeds), env.py (the rendered
environment), expert.py (metaworld's scripted experts), phases.py (ground-truth phases read off the experts' code),
simulator.py (its registry entry)."""
