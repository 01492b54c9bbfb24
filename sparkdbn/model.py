"""The DBN model on disk and in numpy: npz weights plus model.json, never pickle.

`model/layer_{i}.npz` holds `W` (n_in × n_out), `vbias` (n_in) and `hbias` (n_out) as float32,
readable with numpy alone; `model/model.json` holds the architecture, unit types and the
training config. Loading checks every file against model.json, so a tampered or partial model
directory is an `InputError`, not a wrong answer.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparkdbn.errors import InputError
from sparkdbn.kernels.mlp import MLPParams, predict_proba
from sparkdbn.kernels.rbm import VISIBLE_TYPES, RBMParams, hidden_probs

FORMAT = "sparkdbn-dbn"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
CLASSIFIER_NPZ = "classifier.npz"


@dataclass
class Softmax:
    """The classifier's output layer: W (n_top × n_classes) and bias (n_classes), float32."""

    W: np.ndarray
    bias: np.ndarray


@dataclass
class DBNModel:
    """A stack of RBMs; layer i maps sizes[i] units to sizes[i + 1]."""

    layers: list[RBMParams]
    visible: str = "bernoulli"
    config: dict[str, Any] = field(default_factory=dict)
    classifier: Softmax | None = None

    def __post_init__(self) -> None:
        if self.visible not in VISIBLE_TYPES:
            raise ValueError(f"visible must be one of {VISIBLE_TYPES}, got {self.visible!r}")
        for i in range(1, len(self.layers)):
            if self.layers[i].n_visible != self.layers[i - 1].n_hidden:
                raise ValueError(
                    f"layer {i} has {self.layers[i].n_visible} inputs but layer {i - 1} has "
                    f"{self.layers[i - 1].n_hidden} outputs"
                )

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].n_visible] + [p.n_hidden for p in self.layers] if self.layers else []

    def transform(self, X: np.ndarray, upto: int | None = None) -> np.ndarray:
        """Hidden probabilities of layer `upto - 1` (default: the top layer) for rows X."""
        out = np.asarray(X, np.float32)
        for params in self.layers[: len(self.layers) if upto is None else upto]:
            out = hidden_probs(params, out)
        return out

    @property
    def n_classes(self) -> int | None:
        return None if self.classifier is None else int(self.classifier.W.shape[1])

    def to_mlp(self) -> MLPParams:
        """The unrolled feed-forward net (hidden layers' W and hbias, then the softmax)."""
        if self.classifier is None:
            raise ValueError("this DBN has no classifier layer; fine-tune it first")
        weights = [p.W for p in self.layers] + [self.classifier.W]
        biases = [p.hbias for p in self.layers] + [self.classifier.bias]
        return MLPParams(weights, biases)

    def with_mlp(self, mlp: MLPParams) -> DBNModel:
        """This model with fine-tuned weights; visible biases stay as pretrained."""
        layers = [
            RBMParams(W.copy(), p.vbias.copy(), b.copy())
            for p, W, b in zip(self.layers, mlp.weights[:-1], mlp.biases[:-1], strict=True)
        ]
        softmax = Softmax(mlp.weights[-1].copy(), mlp.biases[-1].copy())
        return DBNModel(layers, self.visible, dict(self.config), softmax)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return predict_proba(self.to_mlp(), np.asarray(X, np.float32))

    def save(self, directory: str | Path) -> None:
        """Write model.json and one npz per layer into `directory` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(self.layers):
            np.savez(path / f"layer_{i}.npz", W=p.W, vbias=p.vbias, hbias=p.hbias)
        if self.classifier is not None:
            np.savez(path / CLASSIFIER_NPZ, W=self.classifier.W, bias=self.classifier.bias)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sizes": self.sizes,
            "visible": self.visible,
            "hidden": "bernoulli",
            "layers": [f"layer_{i}.npz" for i in range(len(self.layers))],
            "classifier": None
            if self.classifier is None
            else {"file": CLASSIFIER_NPZ, "n_classes": self.n_classes, "activation": "softmax"},
            "config": self.config,
        }
        (path / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> DBNModel:
        path = Path(directory)
        meta = _read_meta(path)
        sizes = meta["sizes"]
        layers = [
            _read_layer(path / name, sizes[i], sizes[i + 1])
            for i, name in enumerate(meta["layers"])
        ]
        classifier = None
        if meta.get("classifier"):
            n_classes = meta["classifier"].get("n_classes")
            if not isinstance(n_classes, int) or n_classes < 2:
                raise InputError(f"{path / MODEL_JSON}: classifier n_classes {n_classes!r}")
            arrays = _read_npz(
                path / CLASSIFIER_NPZ, {"W": (sizes[-1], n_classes), "bias": (n_classes,)}
            )
            classifier = Softmax(arrays["W"], arrays["bias"])
        return cls(layers, meta["visible"], meta.get("config", {}), classifier)


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / MODEL_JSON
    if not file.is_file():
        raise InputError(f"model directory {str(path)!r} has no {MODEL_JSON}")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{file}: not a sparkdbn model (format {meta.get('format')!r})")
    sizes, layers = meta.get("sizes"), meta.get("layers")
    valid_sizes = isinstance(sizes, list) and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    )
    if not valid_sizes or not isinstance(layers, list) or len(layers) != len(sizes) - 1:
        raise InputError(f"{file}: 'sizes' {sizes!r} does not fit 'layers' {layers!r}")
    if meta.get("visible") not in VISIBLE_TYPES:
        raise InputError(f"{file}: unknown visible unit type {meta.get('visible')!r}")
    return meta


def _read_layer(file: Path, n_in: int, n_out: int) -> RBMParams:
    expected = {"W": (n_in, n_out), "vbias": (n_in,), "hbias": (n_out,)}
    arrays = _read_npz(file, expected)
    return RBMParams(arrays["W"], arrays["vbias"], arrays["hbias"])


def _read_npz(file: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Arrays of an npz file, checked against the shapes model.json implies."""
    if not file.is_file():
        raise InputError(f"model file {str(file)!r} is missing")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in expected if key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{file}: not a readable npz file ({err})") from err
    missing = [key for key in expected if key not in arrays]
    if missing:
        raise InputError(f"{file}: missing array {missing[0]!r}")
    for key, shape in expected.items():
        arr = arrays[key]
        if arr.shape != shape or arr.dtype != np.float32:
            raise InputError(
                f"{file}: {key} is {arr.dtype}{list(arr.shape)}, "
                f"model.json says float32{list(shape)}"
            )
        if not np.isfinite(arr).all():
            raise InputError(f"{file}: {key} has non-finite values")
    return arrays
