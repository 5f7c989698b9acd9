"""digits_cnn: a small conv net on scikit-learn's bundled 8x8 digits, upscaled to 32x32.

Its trained weights ship with the package (scripts/train_builtin_weights.py made them; another recipe,
e.g. `width=32`, trains on first use in about 10 s and is cached). The upscaling is what
makes INT8 pay off: at 8x8 a conv net this small runs no faster in INT8 than in FP32 on any framework,
while at 32x32 the convolutions dominate and INT8 kernels win several-fold.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from lpot_research.measure.metrics import TopK
from lpot_research.models import ModelBundle, check_framework, trained_weights
from lpot_research.models.data import ArrayLoader, sklearn_digits
from lpot_research.quant.space import stable_hash

log = logging.getLogger(__name__)
RECIPE_VERSION = 1  # bump when the architecture or training changes, to invalidate caches
# PyTorch trains it; onnxrt exports the PyTorch model; TensorFlow and MXNet get Keras / Gluon
# counterparts carrying the same weights, so every framework starts from the same FP32 model.
FRAMEWORKS = ("pytorch", "onnxrt", "tensorflow", "mxnet")


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_block(1, w, 1), conv_block(w, 2 * w, 2), conv_block(2 * w, 2 * w, 1),
            conv_block(2 * w, 4 * w, 2), conv_block(4 * w, 4 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def digits_arrays(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, target = sklearn_digits()
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    return x, torch.from_numpy(target)


class DigitsCNN:
    """Spec of the digits_cnn bundle; `load()` trains (or loads cached weights) and builds data."""

    frameworks = FRAMEWORKS

    def __init__(self, name: str = "digits_cnn", width: int = 16, image_size: int = 32, epochs: int = 8,
                 lr: float = 3e-3, seed: int = 0, train_size: int = 1257, eval_batch_size: int = 128,
                 calib_batch_size: int = 32, bench_batch_size: int = 32, metric: Any = None) -> None:
        self.name, self.width, self.image_size = name, width, image_size
        self.epochs, self.lr, self.seed = epochs, lr, seed
        self.train_size, self.eval_batch_size, self.calib_batch_size = train_size, eval_batch_size, calib_batch_size
        self.bench_batch_size = bench_batch_size
        self.metric = metric if metric is not None else TopK(1)

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> DigitsNet:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same arithmetic, hence the same weights, on every machine
        try:
            torch.manual_seed(self.seed)
            net = DigitsNet(self.width)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, epochs=self.epochs,
                                                        steps_per_epoch=(len(x) + 63) // 64)
            gen = torch.Generator().manual_seed(self.seed)
            net.train()
            for _ in range(self.epochs):
                perm = torch.randperm(len(x), generator=gen)
                for i in range(0, len(x), 64):
                    idx = perm[i:i + 64]
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                    opt.step()
                    sched.step()
        finally:
            torch.set_num_threads(threads)
        return net.eval()

    def trained(self) -> DigitsNet:
        """The trained PyTorch net (the shipped weights for the default recipe, else trained once and
        cached)."""
        n = self.train_size
        key = stable_hash({"v": RECIPE_VERSION, "w": self.width, "s": self.image_size, "e": self.epochs,
                           "lr": self.lr, "seed": self.seed, "n": n}, 12)

        def train() -> dict[str, np.ndarray]:
            x, y = digits_arrays(self.image_size)
            return {k: v.numpy() for k, v in self._train(x[:n], y[:n]).state_dict().items()}

        net = DigitsNet(self.width)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in trained_weights("digits_cnn", key, train).items()})
        return net.eval()

    def load(self, framework: str = "pytorch") -> ModelBundle:
        check_framework(self.name, framework, FRAMEWORKS)
        net = self.trained()
        x, y = digits_arrays(self.image_size)
        n = self.train_size
        model: Any = net
        if framework in ("tensorflow", "mxnet"):
            state = {k: v.numpy() for k, v in net.state_dict().items()}
            if framework == "tensorflow":
                from lpot_research.models.digits_keras import to_keras

                model = to_keras(state, self.width, self.image_size)
                x = x.permute(0, 2, 3, 1)  # Keras is NHWC
            else:
                from lpot_research.models.digits_gluon import to_gluon

                model = to_gluon(state, self.width, self.image_size)
            x, y = x.numpy(), y.numpy()
        # Calibration comes from the training split, evaluation from the held-out rest.
        calib_order = np.random.default_rng(self.seed).permutation(n)
        return ModelBundle(
            name=self.name,
            model=model,
            calib_dataloader=ArrayLoader(x[:n][calib_order], y[:n][calib_order], self.calib_batch_size),
            eval_dataloader=ArrayLoader(x[n:], y[n:], self.eval_batch_size),
            metric=self.metric,
            example_inputs=x[: self.calib_batch_size],
            bench_batch_size=self.bench_batch_size,
            info={"train_samples": n, "eval_samples": len(x) - n},
        )
