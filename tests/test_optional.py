"""Each framework is optional: the core runs with none of them installed."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_works_without_any_framework_installed(tmp_path):
    """With torch, TensorFlow, MXNet and ONNX Runtime blocked, the package imports, tunes a
    user-supplied adaptor, and asking for a framework names the extra to install."""
    code = textwrap.dedent(f"""
        import sys
        for m in ("torch", "tensorflow", "keras", "mxnet", "onnxruntime", "onnx", "ai_edge_litert"):
            sys.modules[m] = None
        sys.path.insert(0, {str(ROOT)!r})
        import lpot_research
        from lpot_research.errors import ConfigError
        from tests.fakes import FakeAdaptor, FakeModel
        from tests.helpers import LOADER
        r = lpot_research.tune(FakeModel(None), LOADER, LOADER, eval_func=lambda m: 0.9, framework=FakeAdaptor(),
                               output_dir={str(tmp_path)!r})
        assert r.summary["trials"] >= 1
        for name, extra in (("tensorflow", "tensorflow"), ("mxnet", "mxnet"), ("pytorch", "pytorch")):
            try:
                lpot_research.tune(FakeModel(None), LOADER, LOADER, eval_func=lambda m: 0.9, framework=name)
            except ConfigError as e:
                assert f"pip install 'lpot-research[{{extra}}]'" in str(e), e
            else:
                raise AssertionError(name)
        assert not any(sys.modules.get(m) for m in ("torch", "tensorflow", "mxnet"))
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
