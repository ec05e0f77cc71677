"""Initialiser names shared by every backend, with Keras's definitions.

Each backend implements them natively; the names, parameters and formulas are
fixed here so that ``--init he_normal`` means the same distribution everywhere:

============== ===============================================================
zeros          0
ones           1
normal:STD     N(0, STD)                         (default STD 0.05, as Keras)
uniform:LIM    U(-LIM, LIM)                      (default LIM 0.05, as Keras)
glorot_uniform U(-l, l), l = sqrt(6 / (fan_in + fan_out))
glorot_normal  truncated N(0, s), s = sqrt(2 / (fan_in + fan_out))
he_uniform     U(-l, l), l = sqrt(6 / fan_in)
he_normal      truncated N(0, s), s = sqrt(2 / fan_in)
lecun_uniform  U(-l, l), l = sqrt(3 / fan_in)
lecun_normal   truncated N(0, s), s = sqrt(1 / fan_in)
============== ===============================================================

Truncated normals cut at 2 s and rescale s by 1/0.87962566 as Keras does, so
the standard deviation of the drawn weights is ``s``. For a conv kernel
``fan_in = kh * kw * in_channels`` and ``fan_out = kh * kw * out_channels``.
Biases always start at zero.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

ALIASES = {
    "xavier_uniform": "glorot_uniform",
    "xavier_normal": "glorot_normal",
    "kaiming_uniform": "he_uniform",
    "kaiming_normal": "he_normal",
    "random_normal": "normal",
    "random_uniform": "uniform",
}
NAMES = (
    "zeros", "ones", "normal", "uniform", "glorot_uniform", "glorot_normal",
    "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
)
PARAMETRISED = {"normal": 0.05, "uniform": 0.05}
TRUNCATED_STD_CORRECTION = 0.87962566103423978


@dataclass(frozen=True)
class Distribution:
    """What an initialiser draws for one weight tensor: a backend turns it into one native call."""

    kind: str  # "constant", "normal", "uniform" (U(-value, value)) or "truncated_normal" (cut at ±2 value)
    value: float  # the constant, the standard deviation of the normal drawn from, or the limit


class InitSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    scale: float | None = Field(default=None, gt=0, description="stddev for normal, limit for uniform")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        value = ALIASES.get(value.strip().lower(), value.strip().lower())
        if value not in NAMES:
            raise ValueError(f"unknown initialiser {value!r}; choose one of {', '.join(NAMES)}")
        return value

    @classmethod
    def parse(cls, text: str) -> "InitSpec":
        """``glorot_uniform``, ``normal:0.02``, ``uniform:0.1``."""
        name, _, arg = text.partition(":")
        if not arg:
            return cls(name=name)
        try:
            scale = float(arg)
        except ValueError:
            raise ValueError(f"initialiser parameter {arg!r} is not a number (e.g. normal:0.05)") from None
        return cls(name=name, scale=scale)

    @property
    def param(self) -> float | None:
        """The stddev/limit for ``normal``/``uniform`` (Keras's defaults when unset)."""
        return self.scale if self.scale is not None else PARAMETRISED.get(self.name)

    def __str__(self) -> str:
        return f"{self.name}:{self.scale:g}" if self.scale is not None else self.name

    def distribution(self, fan_in: int, fan_out: int) -> Distribution:
        """The table above for a tensor with these fans (for a truncated normal, the std before truncation)."""
        name, p = self.name, self.param
        if name in ("zeros", "ones"):
            return Distribution("constant", 0.0 if name == "zeros" else 1.0)
        if name in ("normal", "uniform"):
            assert p is not None  # PARAMETRISED has both
            return Distribution(name, p)
        family, dist = name.split("_")
        scale = {"glorot": 2.0 / (fan_in + fan_out), "he": 2.0 / fan_in, "lecun": 1.0 / fan_in}[family]
        if dist == "uniform":
            return Distribution("uniform", math.sqrt(3.0 * scale))
        return Distribution("truncated_normal", math.sqrt(scale) / TRUNCATED_STD_CORRECTION)

    def expected_std(self, fan_in: int, fan_out: int) -> float:
        """Standard deviation of the weights this initialiser draws (for tests and checks)."""
        name, p = self.name, self.param
        if name in ("zeros", "ones"):
            return 0.0
        if name in ("normal", "uniform"):
            assert p is not None  # PARAMETRISED has both
            return p if name == "normal" else p / math.sqrt(3)
        fan = {"glorot": (fan_in + fan_out) / 2, "he": fan_in / 2, "lecun": fan_in}[name.split("_")[0]]
        return math.sqrt(1.0 / fan)


def require_blocks(model: str, blocks, known) -> None:
    """``apply_init``'s blocks must be the model's (``head`` included): else one line naming them."""
    from tle.errors import UserError

    unknown = [b for b in blocks if b not in known]
    if unknown:
        raise UserError(f"{model} has no block {', '.join(unknown)}", f"its blocks are {', '.join(known)}")
