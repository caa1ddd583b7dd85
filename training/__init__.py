"""Offline half of riskstream: learn risk models with Keras and export them to ONNX."""
