"""Annotation: teacher actions, phases and direction cues for every frame (annotate.py), and the audit (audit.py)."""
