import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the PyTorch tests skip themselves
    pass


@pytest.fixture
def fake():
    from tests.fakes import FakeAdaptor

    return FakeAdaptor
