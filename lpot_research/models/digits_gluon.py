"""The Gluon counterpart of digits.DigitsNet, carrying the trained PyTorch weights, for framework=mxnet.

Layer prefixes mirror the PyTorch module paths (features.0.0 -> features0_conv_), so the symbol op
names the MXNet adaptor tunes read like the PyTorch ones: features0_conv_fwd ... features4_conv_fwd, fc_fwd.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lpot_research.adaptors.mxnet import import_mxnet

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default


def to_gluon(state: dict[str, np.ndarray], width: int, image_size: int, classes: int = 10) -> Any:
    """A hybridized Gluon HybridBlock computing DigitsNet in inference mode with the weights of a
    DigitsNet state dict (numpy arrays). `image_size` is only checked by one forward pass at build time,
    so a wrong state fails here rather than in the first trial."""
    mx = import_mxnet()
    from mxnet.gluon import nn

    w = width
    blocks = [(1, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
    net = nn.HybridSequential(prefix="")
    with net.name_scope():
        for i, (cin, cout, stride) in enumerate(blocks):
            net.add(nn.Conv2D(cout, 3, stride, 1, use_bias=False, in_channels=cin, prefix=f"features{i}_conv_"),
                    # use_global_stats: running statistics even under autograd.record, as the eval-mode net
                    nn.BatchNorm(epsilon=BN_EPS, in_channels=cout, use_global_stats=True, prefix=f"features{i}_bn_"),
                    nn.Activation("relu", prefix=f"features{i}_relu_"))
        net.add(nn.GlobalAvgPool2D(prefix="pool_"), nn.Dense(classes, in_units=4 * w, prefix="fc_"))
    net.initialize(ctx=mx.cpu())
    values = {"fc_weight": state["fc.weight"], "fc_bias": state["fc.bias"]}
    for i in range(len(blocks)):
        values[f"features{i}_conv_weight"] = state[f"features.{i}.0.weight"]
        for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("running_mean", "running_mean"),
                             ("running_var", "running_var")):
            values[f"features{i}_bn_{ours}"] = state[f"features.{i}.1.{theirs}"]
    params = net.collect_params()
    if set(params.keys()) != set(values):
        raise ValueError(f"parameter names differ: {sorted(set(params.keys()) ^ set(values))}")
    for name, value in values.items():
        if tuple(params[name].shape) != tuple(value.shape):
            raise ValueError(f"{name}: the state has shape {tuple(value.shape)}, the Gluon net {params[name].shape}")
        params[name].set_data(mx.nd.array(value, dtype=np.float32))
    net.hybridize()
    net(mx.nd.zeros((1, 1, image_size, image_size))).wait_to_read()
    return net
