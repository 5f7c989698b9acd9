"""The Keras counterpart of digits_cnn: the same architecture, carrying the trained PyTorch weights.

Layers are named after the PyTorch module paths (`features.0.conv`, ..., `fc`), so an op name means the
same layer in every framework. Inputs are NHWC (Keras' layout on CPU)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_keras(state: dict[str, np.ndarray], width: int, image_size: int, classes: int = 10) -> Any:
    """A Keras functional model equal to `DigitsNet` with the weights of `state` (a PyTorch state
    dict as numpy arrays). Convolutions pad explicitly: Keras' 'same' pads stride-2 convolutions
    asymmetrically, PyTorch's padding=1 does not."""
    import keras

    chans = [(1, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1), (2 * width, 4 * width, 2),
             (4 * width, 4 * width, 1)]
    x = inputs = keras.Input((image_size, image_size, 1), name="image")
    for i, (_, cout, stride) in enumerate(chans):
        x = keras.layers.ZeroPadding2D(1, name=f"features.{i}.pad")(x)
        x = keras.layers.Conv2D(cout, 3, strides=stride, use_bias=False, name=f"features.{i}.conv")(x)
        x = keras.layers.BatchNormalization(epsilon=1e-5, name=f"features.{i}.bn")(x)
        x = keras.layers.ReLU(name=f"features.{i}.relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(classes, name="fc")(x)
    model = keras.Model(inputs, out, name="digits_cnn")
    for i in range(len(chans)):
        p = f"features.{i}"
        model.get_layer(f"{p}.conv").set_weights([state[f"{p}.0.weight"].transpose(2, 3, 1, 0)])
        model.get_layer(f"{p}.bn").set_weights([state[f"{p}.1.{k}"] for k in
                                                ("weight", "bias", "running_mean", "running_var")])
    model.get_layer("fc").set_weights([state["fc.weight"].T, state["fc.bias"]])
    return model
