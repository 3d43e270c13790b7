"""Numeric core: ONNX graphs built with spox and run by onnxruntime.

This package imports nothing from the HTTP or storage layers; it takes numpy arrays and returns numbers.
"""
