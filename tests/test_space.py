import subprocess
import sys

import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.quant.space import OpCapability, OpChoice, QSpec, TuneConfig, build_space

W = {"dtype": ("int8",), "scheme": ("sym", "asym"), "granularity": ("per_channel", "per_tensor"),
     "algorithm": ("minmax",)}
A = {"dtype": ("uint8",), "scheme": ("asym", "sym"), "granularity": ("per_tensor",), "algorithm": ("minmax", "kl")}
STATIC = "post_training_static_quant"


def caps(defaults=None, fallback=("bf16", "fp32")):
    d = defaults or {}
    return [
        OpCapability("conv1", "Conv2d", W, A, fallback, defaults=d),
        OpCapability("layer.0.fc", "Linear", W, A, fallback, defaults=d),
        OpCapability("layer.1.fc", "Linear", W, A, fallback, defaults=d),
        OpCapability("head", "Linear", None, None, ("fp32",), quantizable=False),
    ]


def test_full_space_is_the_product_of_capabilities():
    s = build_space(caps(), STATIC, 100)
    per_op = 2 * 2 * 1 * 2 * 2 + 2  # weight scheme*gran*algo x act scheme*algo + bf16/fp32
    assert s.size == per_op ** 3 * 1
    assert s.op_options("head") == (OpChoice("fp32"),)


def test_defaults_apply_only_when_unconstrained():
    d = {"weight": {"scheme": ("sym",)}}
    s = build_space(caps(d), STATIC, 100)
    assert {o.weight.scheme for o in s.op_options("conv1") if o.quantized} == {"sym"}
    s2 = build_space(caps(d), STATIC, 100, model_wise={"weight": {"scheme": ["asym"]}})
    assert {o.weight.scheme for o in s2.op_options("conv1") if o.quantized} == {"asym"}


def test_model_wise_narrows_every_op():
    s = build_space(caps(), STATIC, 100, model_wise={"activation": {"algorithm": "kl"},
                                                    "weight": {"granularity": ["per_tensor"]}})
    for name in ("conv1", "layer.0.fc", "layer.1.fc"):
        q = [o for o in s.op_options(name) if o.quantized]
        assert q and all(o.activation.algorithm == "kl" and o.weight.granularity == "per_tensor" for o in q)


def test_dtype_lists_control_fallbacks():
    s = build_space(caps(), STATIC, 100, model_wise={"activation": {"dtype": ["uint8", "fp32"]}})
    assert [o.dtype for o in s.op_options("conv1") if not o.quantized] == ["fp32"]


def test_op_wise_exact_name_and_regex():
    s = build_space(caps(), STATIC, 100, op_wise={
        "conv1": {"activation": {"dtype": ["fp32"]}},
        r"layer\.\d+\.fc": {"activation": {"algorithm": ["kl"], "scheme": "sym"}},
    })
    assert s.op_options("conv1") == (OpChoice("fp32"),)
    for n in ("layer.0.fc", "layer.1.fc"):
        q = [o for o in s.op_options(n) if o.quantized]
        assert q and {(o.activation.algorithm, o.activation.scheme) for o in q} == {("kl", "sym")}


def test_op_wise_key_matching_nothing_names_the_valid_ops():
    with pytest.raises(ConfigError) as e:
        build_space(caps(), STATIC, 100, op_wise={"conv9": {"activation": {"dtype": ["fp32"]}}})
    msg = str(e.value)
    assert "'conv9'" in msg and "conv1" in msg and "layer.0.fc" in msg


def test_value_outside_capability_names_value_and_choices():
    with pytest.raises(ConfigError) as e:
        build_space(caps(), STATIC, 100, model_wise={"activation": {"algorithm": ["entropy"]}})
    assert "'entropy'" in str(e.value) and "minmax" in str(e.value) and "kl" in str(e.value)
    with pytest.raises(ConfigError, match="'bf16'.*valid choices"):
        build_space(caps(fallback=("fp32",)), STATIC, 100, model_wise={"activation": {"dtype": ["uint8", "bf16"]}})
    with pytest.raises(ConfigError, match="unknown key 'algo'"):
        build_space(caps(), STATIC, 100, op_wise={"conv1": {"weight": {"algo": "minmax"}}})


@pytest.mark.parametrize("bad", [0, -5, [], [10, 0], "100", 1.5])
def test_bad_sampling_size(bad):
    with pytest.raises(ConfigError, match="sampling_size"):
        build_space(caps(), STATIC, bad)


def test_bad_approach_lists_choices():
    with pytest.raises(ConfigError, match="post_training_dynamic_quant"):
        build_space(caps(), "qat", 100)


def test_sampling_size_list_is_a_dimension_of_model_wise_configs():
    s1 = build_space(caps(), STATIC, 100)
    s2 = build_space(caps(), STATIC, [50, 100])
    assert s2.size == 2 * s1.size
    mw1, mw2 = s1.model_wise_configs(), s2.model_wise_configs()
    assert len(mw2) == 2 * len(mw1)
    assert {c.sampling_size for c in mw2} == {50, 100}


def test_model_wise_configs_apply_one_setting_everywhere_and_dedupe():
    s = build_space(caps(), STATIC, 100)
    mw = s.model_wise_configs()
    assert len(mw) == 2 * 2 * 2 * 2  # weight scheme x granularity x act scheme x algorithm
    assert len({c.id for c in mw}) == len(mw)
    for c in mw:
        chosen = {c.op(n) for n in ("conv1", "layer.0.fc", "layer.1.fc")}
        assert len(chosen) == 1 and next(iter(chosen)).quantized
        assert c.op("head") == OpChoice("fp32")
        assert s.contains(c)


def test_config_id_is_stable_across_processes_and_ignores_note():
    s = build_space(caps(), STATIC, 100)
    cfg = s.model_wise_configs()[3]
    assert cfg.with_note("something else").id == cfg.id
    code = ("from tests.test_space import caps, build_space, STATIC;"
            "print(build_space(caps(), STATIC, 100).model_wise_configs()[3].id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__('pathlib').Path(__file__).parents[1]))
    assert out.stdout.strip() == cfg.id
    assert TuneConfig.from_dict(cfg.to_dict()) == cfg


def test_config_changes_change_the_id():
    s = build_space(caps(), STATIC, 100)
    cfg = s.model_wise_configs()[0]
    assert cfg.with_ops({"conv1": OpChoice("fp32")}).id != cfg.id
    q = QSpec("uint8", "asym", "per_tensor", "kl")
    assert OpChoice("int8", None, q) != OpChoice("int8", None, QSpec("uint8", "sym", "per_tensor", "kl"))


def test_null_tensor_constraints_mean_unconstrained():
    a = build_space(caps(), STATIC, 100, model_wise={"weight": None, "activation": None})
    b = build_space(caps(), STATIC, 100)
    assert a == b


def test_fp32_only_dtype_removes_int8_even_without_an_activation_capability():
    dyn = [OpCapability("fc", "Linear", W, None, ("fp32",))]  # dynamic: no activation to quantize
    s = build_space(dyn, "post_training_dynamic_quant", 100, op_wise={"fc": {"activation": {"dtype": ["fp32"]}}})
    assert s.op_options("fc") == (OpChoice("fp32"),)


def test_model_wise_configs_match_settings_across_activation_dtypes():
    """An op whose activations are int8 (e.g. it reads signed inputs) next to uint8 ops still takes
    each model-wide algorithm/scheme: no stage-1 config mixes kl and minmax by accident."""
    a_int8 = {**A, "dtype": ("int8",)}
    c = [OpCapability("conv1", "Conv2d", W, a_int8, ("fp32",)), OpCapability("fc", "Linear", W, A, ("fp32",))]
    s = build_space(c, STATIC, 100, model_wise={"weight": {"scheme": "sym", "granularity": "per_channel"}})
    for cfg in s.model_wise_configs():
        acts = [cfg.op(n).activation for n in ("conv1", "fc")]
        assert acts[0].dtype == "int8" and acts[1].dtype == "uint8"
        assert (acts[0].scheme, acts[0].algorithm) == (acts[1].scheme, acts[1].algorithm), cfg.note
    # 2 schemes x 2 algorithms: the int8 and uint8 spellings of one setting give the same config
    assert len(s.model_wise_configs()) == 4
