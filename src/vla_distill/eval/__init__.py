"""Closed-loop evaluation in simulation (evaluate.py), of teachers and policies alike (actors.py), and its report."""
