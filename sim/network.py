"""The symmetric two-layer network of SPEC section 2, on top of the Numba kernels.

f(x) = sum_i act(<w_i, x> - b_i) - act(-<w_i, x> - b_i): with act = ReLU each neuron
is the soft-threshold (shrinkage) of its projection; f is odd. Output weights are
fixed at +1; only W (and b in the 'trained' bias mode) is learned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .linalg import matmul
from .config import ModelConfig, RunConfig
from .data import STREAM_INIT, stream

ACTIVATIONS = {"relu": kernels.RELU, "smooth_relu": kernels.SMOOTH_RELU}


@dataclass
class TwoLayerNet:
    """Weights W (m x d) and the bias state of the symmetric network.

    b holds the absolute biases for the 'fixed' and 'trained' modes; beta is the
    current relative bias factor for 'relative' and 'schedule' (b_i = beta |w_i|,
    recomputed from W, never differentiated).
    """

    W: np.ndarray
    model: ModelConfig
    b: np.ndarray = field(default=None)
    beta: float = 0.0

    def __post_init__(self):
        self.W = np.ascontiguousarray(self.W)
        if self.b is None:
            self.b = np.full(self.W.shape[0], float(self.model.bias_value))
        self.b = np.asarray(self.b, dtype=np.float64)
        if self.model.bias in ("relative", "schedule") and self.beta == 0.0:
            self.beta = float(self.model.beta)

    @classmethod
    def init(cls, cfg: RunConfig, dtype=np.float64) -> "TwoLayerNet":
        """Small Gaussian init w_i ~ N(0, init_scale^2 I), from the config's init stream."""
        rng = stream(cfg.data, STREAM_INIT)
        W = rng.standard_normal((cfg.width(), cfg.data.d)) * cfg.init_scale()
        return cls(W.astype(dtype), cfg.model)

    def copy(self) -> "TwoLayerNet":
        return TwoLayerNet(self.W.copy(), self.model, self.b.copy(), self.beta)

    def astype(self, dtype) -> "TwoLayerNet":
        return TwoLayerNet(self.W.astype(dtype), self.model, self.b.copy(), self.beta)

    @property
    def width(self) -> int:
        return self.W.shape[0]

    def bias(self) -> np.ndarray:
        """The bias vector b (float64) in force now."""
        if self.model.bias in ("relative", "schedule"):
            return self.beta * np.linalg.norm(self.W.astype(np.float64), axis=1)
        return self.b

    def _act_args(self):
        return ACTIVATIONS[self.model.activation], float(self.model.q), float(self.model.rho)

    def preactivations(self, X: np.ndarray) -> np.ndarray:
        """U = X W^T (n x m), in the dtype of W."""
        return matmul(np.asarray(X, dtype=self.W.dtype), self.W.T)

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Network outputs f(x) (float64) for the rows of X."""
        U = self.preactivations(X)
        return kernels.outputs_from_preacts(U, self.bias(), *self._act_args())

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels sgn f(x) in {-1, +1} (f == 0 counts as a mistake for both labels: 0)."""
        return np.sign(self.forward(X))

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(y * self.forward(X) > 0))

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray, want_bias: bool | None = None):
        """Mean logistic loss and its exact gradient.

        Returns (loss, grad_W, grad_b, f): grad_W in the dtype of W, grad_b (float64,
        zeros unless the bias is trained or want_bias is set) and f the outputs.
        """
        if want_bias is None:
            want_bias = self.model.bias == "trained"
        X = np.asarray(X, dtype=self.W.dtype)
        U = self.preactivations(X)
        f, loss, _, gb = kernels.backward_stage(U, np.asarray(y, np.float64), self.bias(),
                                                *self._act_args(), 1.0 / len(X), want_bias)
        grad_W = matmul(U.T, X)  # U now holds G = (1/n) dl/df * dg/du
        return float(np.sum(loss) / len(X)), grad_W, gb, f

    def input_gradient(self, X: np.ndarray, y: np.ndarray):
        """Per-sample gradient of l_n = log(1 + exp(-y_n f(x_n))) in x_n.

        Returns (grad_x (n x d, dtype of W), loss_n, f). Used by the attacks.
        """
        X = np.asarray(X, dtype=self.W.dtype)
        U = self.preactivations(X)
        f, loss, _, _ = kernels.backward_stage(U, np.asarray(y, np.float64), self.bias(),
                                               *self._act_args(), 1.0, False)
        return matmul(U, self.W), loss, f

    def output_gradient(self, X: np.ndarray):
        """(df/dx (n x d, dtype of W), f): the gradient of each output in its input."""
        X = np.asarray(X, dtype=self.W.dtype)
        U = self.preactivations(X)
        f = kernels.output_grad_stage(U, self.bias(), *self._act_args())
        return matmul(U, self.W), f
