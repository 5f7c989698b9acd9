"""lpot-research: accuracy-driven low-precision post-training quantization, tuned by strategies."""

from __future__ import annotations

from typing import Any

from lpot_research.core.cpu import apply_isa_cap

apply_isa_cap()  # LPOT_CPU_ISA: the frameworks' kernels follow the capped CPU class (see lpot_research.core.cpu)

__version__ = "0.1.0"
__all__ = ["tune", "__version__"]


def tune(*args: Any, **kwargs: Any) -> Any:
    """See `lpot_research.api.tune` (imported lazily: frameworks load only when used)."""
    from lpot_research.api import tune as _tune

    return _tune(*args, **kwargs)
