"""The export back end's work on exported graphs (no torchao needed): capturing a model, finding its ops,
telling INT8 ops from float ones, and the rewrite that runs an op in BF16."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten
OPS = {aten.linear.default: "Linear", aten.conv1d.default: "Conv1d", aten.conv2d.default: "Conv2d"}
ANNOTATION = "quantization_annotation"  # where PT2E quantizers put a node's annotation


def export_batched(model: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
    """torch.export.export with the batch dimension dynamic where the model allows (Dim.AUTO). A batch
    of one is doubled first: export specializes a dimension of size 1 (it would then take batches of one
    only). The arguments are copied: the program keeps them, and a slice would keep its whole dataset."""
    args = tuple((torch.cat([a, a]) if a.dim() and a.shape[0] == 1 else a.clone()) if a.dim() else a for a in args)
    dims = tuple({0: torch.export.Dim.AUTO} if a.dim() else None for a in args)
    return torch.export.export(model, args, dynamic_shapes=dims)


def op_name(node: fx.Node) -> str:
    """The op's name: the path of the innermost module whose forward calls it (the node's own name
    for a call in the top-level forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path or node.name


def op_nodes(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Op name -> its Linear/Conv call nodes, in graph order."""
    ops: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in OPS:
            ops.setdefault(op_name(node), []).append(node)
    return ops


def is_dequantize(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and "dequantize" in str(node.target)


def run_in_bf16(gm: fx.GraphModule, ops: dict[str, list[fx.Node]]) -> None:
    """Rewrite each call of `ops` to compute in bfloat16: its float inputs (activation, weight, bias)
    cast to bf16, its output cast back to fp32 (under Inductor's freezing the weight casts are folded)."""
    to = torch.ops.aten._to_copy.default
    for nodes in ops.values():
        for node in nodes:
            with gm.graph.inserting_before(node):
                args = [gm.graph.call_function(to, (a,), {"dtype": torch.bfloat16}) if isinstance(a, fx.Node) else a
                        for a in node.args[:3]]
            node.args = (*args, *node.args[3:])
            with gm.graph.inserting_after(node):
                back = gm.graph.call_function(to, (node,), {"dtype": torch.float32})
            node.replace_all_uses_with(back, delete_user_cb=lambda user, back=back: user is not back)
    gm.graph.lint()
    gm.recompile()
