"""Simulators behind one small protocol (sim/base.py): MetaWorld is the embedded default, LIBERO runs where it is
installed. `sim.registry.get_simulator(name)` is the only place that knows which simulators exist."""
