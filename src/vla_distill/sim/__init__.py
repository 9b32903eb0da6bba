"""Simulation adapters behind one small protocol (MetaWorld is the embedded default)."""
