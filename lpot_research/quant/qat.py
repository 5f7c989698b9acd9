"""quantization.approach=quant_aware_training: the settings of the configured training loop (the PyTorch
back end runs it; lpot_research.config puts them in the one settings schema)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lpot_research.core.errors import ConfigError

LOSSES = ("cross_entropy", "mse")


@dataclass
class QAT:
    """quantization.approach=quant_aware_training: the configured training loop over the calibration
    data (the API's q_func replaces it)."""

    epochs: int = 1
    lr: float = 1e-4
    momentum: float = 0.9
    loss: str = "cross_entropy"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise ConfigError(f"quantization.qat.epochs={self.epochs!r} must be an int >= 0")
        if self.loss not in LOSSES:
            raise ConfigError(f"quantization.qat.loss={self.loss!r} is unknown; valid choices: {list(LOSSES)}")
        for key in ("lr", "momentum"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"quantization.qat.{key}={v!r} must be a number >= 0")
