"""Calibrators: ONNX objective graphs for fitting, ONNX apply graphs (the same ones are exported), and
scikit-learn-style fitters (hyper-parameters in, `fit` -> trailing-underscore fitted state, `transform`)."""
