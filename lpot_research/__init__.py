"""lpot-research: accuracy-driven low-precision post-training quantization, tuned by strategies."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["tune", "__version__"]


def tune(*args: Any, **kwargs: Any) -> Any:
    """See `lpot_research.api.tune` (imported lazily: frameworks load only when used)."""
    from lpot_research.api import tune as _tune

    return _tune(*args, **kwargs)
