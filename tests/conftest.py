import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Importing lpot_research before any framework runs a kernel: under LPOT_CPU_ISA (`make test-avx2`) it
# sets the frameworks' own ISA switches, so PyTorch's and MXNet's kernels are the capped class's.
from lpot_research.core.cpu import cpu_info  # noqa: E402

CPU = cpu_info()

if not os.environ.get("LPOT_EMULATED_CPU"):  # under qemu (tests/test_cpu_kernels.py) torch is not used
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the PyTorch tests skip themselves
        pass


@pytest.fixture
def fake():
    from tests.fakes import FakeAdaptor

    return FakeAdaptor


def pytest_report_header(config):
    return f"CPU: {CPU.describe()}"
