"""Adam, AdamW and SGD with momentum, updating NumPy arrays in place.

Weight decay follows PyTorch: an L2 term added to the gradient for ``adam`` and
``sgd``, decoupled (``w -= lr * wd * w``) for ``adamw``. Epsilon is Keras's 1e-7.
Each update may carry its own factor of ``lr`` (a block's, ``train.lr_decay``);
``lr`` itself is set per epoch (``train.schedule``).
"""

from __future__ import annotations

import numpy as np

from tle.errors import UserError


class Adam:
    def __init__(self, lr: float, weight_decay: float = 0.0, decoupled: bool = False,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7):
        self.lr, self.wd, self.decoupled = lr, weight_decay, decoupled
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.t = 0
        self.moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def step(self, updates: list[tuple[str, np.ndarray, np.ndarray, float]]) -> None:
        """``updates``: (name, parameter, gradient, factor of lr); each parameter changes in place."""
        self.t += 1
        # Bias corrections folded into the step size, as Keras does; a Python float
        # keeps the arithmetic in float32.
        corrected = self.lr * (1 - self.beta2**self.t) ** 0.5 / (1 - self.beta1**self.t)
        for name, param, grad, factor in updates:
            lr = corrected * factor
            if self.wd and not self.decoupled:
                grad = grad + self.wd * param
            m, v = self.moments.get(name) or (np.zeros_like(param), np.zeros_like(param))
            m *= self.beta1
            m += (1 - self.beta1) * grad
            v *= self.beta2
            v += (1 - self.beta2) * grad * grad
            self.moments[name] = (m, v)
            if self.wd and self.decoupled:
                param -= self.lr * factor * self.wd * param
            param -= lr * m / (np.sqrt(v) + self.eps)

    def state(self) -> dict[str, np.ndarray]:
        out = {"t": np.asarray(self.t)}
        for name, (m, v) in self.moments.items():
            out[f"m/{name}"], out[f"v/{name}"] = m, v
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        names = [k[2:] for k in state if k.startswith("m/")]
        self.moments = {n: (state[f"m/{n}"].copy(), state[f"v/{n}"].copy()) for n in names}


class SGD:
    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.lr, self.momentum, self.wd = lr, momentum, weight_decay
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, updates: list[tuple[str, np.ndarray, np.ndarray, float]]) -> None:
        for name, param, grad, factor in updates:
            if self.wd:
                grad = grad + self.wd * param
            if self.momentum:
                v = self.velocity.get(name)
                grad = self.velocity[name] = grad.copy() if v is None else self.momentum * v + grad
            param -= self.lr * factor * grad

    def state(self) -> dict[str, np.ndarray]:
        return {f"velocity/{name}": v for name, v in self.velocity.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = {k.split("/", 1)[1]: v.copy() for k, v in state.items() if k.startswith("velocity/")}


def make_optimizer(name: str, lr: float, weight_decay: float, momentum: float) -> Adam | SGD:
    if name == "adam":
        return Adam(lr, weight_decay)
    if name == "adamw":
        return Adam(lr, weight_decay, decoupled=True)
    if name == "sgd":
        return SGD(lr, momentum, weight_decay)
    raise UserError(f"the numpy backend has no optimizer {name!r}", "use adam, adamw or sgd")
