"""Deployment: standalone bundles and ONNX (export.py), the real-time control loop (control_loop.py, config.py), the
openpi-protocol server (openpi_server.py)."""
