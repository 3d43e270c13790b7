"""Rebuild the demo classifier: an MLP (64 → 32 ReLU → 10) trained by scikit-learn on its bundled digits
data, written as ONNX with onnx.helper (input `x` [N, 64] float32, outputs `logits` [N, 10] and the
penultimate `embedding` [N, 32]), with the validation and test splits beside it. Reproducible: fixed
seeds, so rerunning writes the same files. Run: `.venv/bin/python models/build_digits.py`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
SEED = 0


def main() -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel intensities 0..16 scaled to [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=SEED, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=SEED, stratify=y_rest)
    with warnings.catch_warnings():  # 60 epochs (seconds to train) stop short of sklearn's tolerance
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=SEED).fit(x_train, y_train)
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    inits = [
        numpy_helper.from_array(np.asarray(v, np.float32), name)
        for name, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["hidden"]),
        helper.make_node("Add", ["hidden", "b1"], ["pre_activation"]),
        helper.make_node("Relu", ["pre_activation"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["scores"]),
        helper.make_node("Add", ["scores", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 32]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="caliper-demo")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, HERE / "digits_mlp.onnx")
    np.savez(HERE / "digits_val.npz", x=x_val, labels=y_val)
    np.savez(HERE / "digits_test.npz", x=x_test, labels=y_test)
    accuracy = float(np.mean(mlp.predict(x_test) == y_test))
    print(f"digits MLP: test accuracy {accuracy:.3f}, {len(y_val)} validation and {len(y_test)} test rows")


if __name__ == "__main__":
    main()
