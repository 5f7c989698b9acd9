"""The export back end's torchao PT2E `Quantizer`: it annotates exactly the ops a tuning configuration makes
INT8, each with the observers of its choice."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import fx
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

from lpot_research.adaptors.export_graph import ANNOTATION, op_nodes
from lpot_research.adaptors.torch_observers import pt2e_kl_observer
from lpot_research.quant.space import OpChoice

EPS = 2**-12  # the smallest scale (as torchao's x86 recipe): a constant activation does not divide by 0


def act_observers() -> dict[str, Any]:
    return {"minmax": MinMaxObserver, "kl": pt2e_kl_observer(), "histogram": HistogramObserver}


@functools.cache
def activation_spec(choice: OpChoice, reduce_range: bool) -> QuantizationSpec:
    """UINT8 per tensor: observed in calibration (static), per batch at run time (dynamic), or fake
    quantized with moving averages while training (QAT)."""
    a = choice.activation
    qscheme = torch.per_tensor_symmetric if a is not None and a.scheme == "sym" else torch.per_tensor_affine
    if a is None:
        ctr, dynamic = PlaceholderObserver.with_args(eps=EPS), True
    elif a.algorithm == "moving_average":
        ctr, dynamic = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=EPS), False
    else:
        ctr, dynamic = act_observers()[a.algorithm].with_args(eps=EPS), False
    return QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=127 if reduce_range else 255, qscheme=qscheme,
                            is_dynamic=dynamic, observer_or_fake_quant_ctr=ctr)


@functools.cache
def weight_spec(qat: bool) -> QuantizationSpec:
    """INT8, symmetric per output channel (what oneDNN's INT8 convolution and matmul take)."""
    ctr = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, eps=EPS) if qat
           else PerChannelMinMaxObserver.with_args(eps=EPS))
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
                            ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=ctr)


class OpQuantizer(Quantizer):
    """Annotates each Linear/Conv call of an op in `choices` (op name -> its INT8 choice): its input
    activation and weight quantized, its bias and output float. Inductor's x86 lowering fuses
    dequantize -> op (-> unary) into oneDNN's INT8 kernel; every other op stays as exported."""

    def __init__(self, choices: dict[str, OpChoice], reduce_range: bool) -> None:
        super().__init__()
        self.choices, self.reduce_range = choices, reduce_range

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        for name, nodes in op_nodes(model).items():
            choice = self.choices.get(name)
            if choice is None:
                continue
            qat = choice.activation is not None and choice.activation.algorithm == "moving_average"
            for node in nodes:
                x, w = node.args[0], node.args[1]
                node.meta[ANNOTATION] = QuantizationAnnotation(
                    input_qspec_map={x: activation_spec(choice, self.reduce_range), w: weight_spec(qat)},
                    _annotated=True)
        return model

    def validate(self, model: fx.GraphModule) -> None:
        return None

    def choice_observed_by(self, observer: str) -> OpChoice | None:
        """A choice of this configuration whose activation observer class is named `observer`."""
        for choice in self.choices.values():
            if type(activation_spec(choice, self.reduce_range).observer_or_fake_quant_ctr()).__qualname__ == observer:
                return choice
        return None
