"""Import an object named "package.module:attr" only when it is needed."""

from __future__ import annotations

import importlib
from typing import Any


def load_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
