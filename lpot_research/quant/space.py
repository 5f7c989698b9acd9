"""The tuning space: what each op may become, and whole-model tuning configurations.

Data only. An adaptor reports per-op capabilities (`OpCapability`); the user narrows them with
`model_wise` and `op_wise` constraints; `build_space` intersects the three into a `TuningSpace` whose
points are `TuneConfig`s (one `OpChoice` per op plus the global dimensions).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpot_research.core.errors import ConfigError

QUANT_DTYPES = ("int8", "uint8")
FALLBACK_DTYPES = ("bf16", "fp32")  # order = fallback preference: bf16 keeps more speed than fp32
TENSOR_KEYS = ("dtype", "scheme", "granularity", "algorithm")
APPROACHES = ("post_training_static_quant", "post_training_dynamic_quant", "quant_aware_training")
# recipes that keep ops INT8 with less error, in the order a model gets them (lpot_research.quant.recipes):
# cross-layer equalization and SmoothQuant rewrite the FP32 model before calibration, bias correction the
# biases of the ops the configuration quantizes
RECIPES = ("cle", "smooth_quant", "bias_correction")


@dataclass(frozen=True)
class QSpec:
    """How one tensor (weight or activation) of an op is quantized."""

    dtype: str  # int8 | uint8
    scheme: str  # sym | asym
    granularity: str  # per_tensor | per_channel
    algorithm: str  # minmax | kl | histogram | dynamic

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in TENSOR_KEYS}


@dataclass(frozen=True)
class OpChoice:
    """The precision of one op: quantized (with weight/activation specs), bf16 or fp32."""

    dtype: str  # "int8" for quantized, else "bf16" | "fp32"
    weight: QSpec | None = None
    activation: QSpec | None = None  # None for quantized ops = dynamic quantization

    @property
    def quantized(self) -> bool:
        return self.dtype not in FALLBACK_DTYPES

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype}
        if self.weight is not None:
            d["weight"] = self.weight.to_dict()
        if self.activation is not None:
            d["activation"] = self.activation.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpChoice:
        w, a = d.get("weight"), d.get("activation")
        return cls(d["dtype"], QSpec(**w) if w else None, QSpec(**a) if a else None)

    def short(self) -> str:
        if not self.quantized:
            return self.dtype
        parts = []
        if self.weight:
            w = self.weight
            parts.append(f"w:{w.scheme}/{'pc' if w.granularity == 'per_channel' else 'pt'}/{w.algorithm}")
        if self.activation:
            a = self.activation
            parts.append(f"a:{a.dtype}/{a.scheme}/{a.algorithm}")
        else:
            parts.append("a:dynamic")
        return "int8(" + ",".join(parts) + ")"


@dataclass(frozen=True)
class TuneConfig:
    """One point of the tuning space: a choice per op plus the global dimensions.

    `note` is a human description of how a strategy got here; it is not part of identity. `recipes` holds
    the recipes this configuration applies, (name, value) in `RECIPES` order (SmoothQuant's value is its
    alpha, the others' True); a recipe left off is not listed, so a configuration without recipes has the
    id it had before recipes existed.
    """

    approach: str
    sampling_size: int
    ops: tuple[tuple[str, OpChoice], ...]
    note: str = field(default="", compare=False, hash=False)
    recipes: tuple[tuple[str, Any], ...] = ()

    def recipe(self, name: str) -> Any:
        """The value of a recipe this configuration applies, None when it is off."""
        return dict(self.recipes).get(name)

    def with_recipes(self, recipes: Mapping[str, Any], note: str = "") -> TuneConfig:
        """This configuration with `recipes` (name -> value; None or False turns one off) changed."""
        values = {**dict(self.recipes), **recipes}
        return TuneConfig(self.approach, self.sampling_size, self.ops, note, recipes_of(values))

    def op(self, name: str) -> OpChoice:
        for n, c in self.ops:
            if n == name:
                return c
        raise KeyError(name)

    def with_ops(self, changes: Mapping[str, OpChoice], note: str = "") -> TuneConfig:
        ops = tuple((n, changes.get(n, c)) for n, c in self.ops)
        return TuneConfig(self.approach, self.sampling_size, ops, note, self.recipes)

    def with_note(self, note: str) -> TuneConfig:
        return TuneConfig(self.approach, self.sampling_size, self.ops, note, self.recipes)

    @property
    def fallback_ops(self) -> dict[str, str]:
        return {n: c.dtype for n, c in self.ops if not c.quantized}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "approach": self.approach,
            "sampling_size": self.sampling_size,
            "ops": {n: c.to_dict() for n, c in self.ops},
        }
        if self.recipes:
            d["recipes"] = dict(self.recipes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], note: str = "") -> TuneConfig:
        ops = tuple((n, OpChoice.from_dict(c)) for n, c in d["ops"].items())
        return cls(d["approach"], int(d["sampling_size"]), ops, note, recipes_of(d.get("recipes") or {}))

    def describe_recipes(self) -> str:
        """The recipes applied, in a few words ("" for none): "cle, smooth_quant 0.5"."""
        return describe_recipes(dict(self.recipes))

    @property
    def id(self) -> str:
        return config_id(self.to_dict())

    def diff(self, other: TuneConfig) -> str:
        """What changed from `other` to self, in a few words."""
        parts = []
        if self.sampling_size != other.sampling_size:
            parts.append(f"sampling_size {other.sampling_size}->{self.sampling_size}")
        if self.recipes != other.recipes:
            parts.append(f"recipes {other.describe_recipes() or 'none'}->{self.describe_recipes() or 'none'}")
        changed = [(n, c) for (n, c), (_, o) in zip(self.ops, other.ops, strict=True) if c != o]
        for n, c in changed[:3]:
            parts.append(f"{n}->{c.short()}")
        if len(changed) > 3:
            parts.append(f"+{len(changed) - 3} ops")
        return ", ".join(parts) or "same"


def recipes_of(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """`TuneConfig.recipes` from name -> value: the ones on (not None/False), in `RECIPES` order."""
    unknown = [n for n in values if n not in RECIPES]
    if unknown:
        raise ConfigError(f"recipe {unknown[0]!r} is unknown; valid choices: {list(RECIPES)}")
    return tuple((n, values[n]) for n in RECIPES if values.get(n) not in (None, False))


def describe_recipes(recipes: Mapping[str, Any]) -> str:
    """Recipes (name -> value) in a few words: "cle, smooth_quant 0.5"."""
    return ", ".join(n if v is True else f"{n} {v}" for n, v in recipes.items())


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def config_id(config_dict: Mapping[str, Any]) -> str:
    """A stable hash of a full tuning configuration (same config -> same id, across processes)."""
    return stable_hash(config_dict)


@dataclass(frozen=True)
class OpCapability:
    """What the framework can do with one op. Each tuple is ordered, recommended value first.

    `weight`/`activation` map a tensor key (dtype/scheme/granularity/algorithm) to the allowed values,
    or are None when the op has no such tensor to quantize (e.g. dynamic activations).
    `defaults` narrows a key to the values tried when the user does not constrain it (e.g. asymmetric
    per-channel weights are supported but slow in FX, so they are opt-in).
    `unavailable` says why a value the framework knows is missing here, keyed "tensor.key=value" (e.g.
    "activation.scheme=sym") or "dtype=bf16" for a fallback precision: a user who asks for it gets
    that reason (typically a CPU feature this machine lacks) instead of a bare list of choices.
    """

    name: str
    type: str
    weight: Mapping[str, tuple[str, ...]] | None
    activation: Mapping[str, tuple[str, ...]] | None
    fallback: tuple[str, ...] = FALLBACK_DTYPES
    quantizable: bool = True
    defaults: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)


def _as_list(v: Any) -> list[Any] | None:
    if v is None:
        return None
    if isinstance(v, str | int | float):
        return [v]
    return list(v)


def _same_but_dtype(x: QSpec | None, y: QSpec | None) -> bool:
    return x is not None and y is not None and (x.scheme, x.granularity, x.algorithm) == (
        y.scheme, y.granularity, y.algorithm)


def _closeness(o: OpChoice, w: QSpec | None, a: QSpec | None) -> tuple[bool, bool, bool, bool]:
    """How well an op's option matches a model-wide (weight, activation) setting; max() keeps the
    first of equals, i.e. the recommended one."""
    return (o.activation == a, _same_but_dtype(o.activation, a), o.weight == w, _same_but_dtype(o.weight, w))


@dataclass(frozen=True)
class TuningSpace:
    """The intersection of capabilities and constraints: per-op options plus global dimensions."""

    approach: str
    sampling_sizes: tuple[int, ...]
    options: tuple[tuple[str, tuple[OpChoice, ...]], ...]  # per op, in model order
    op_types: Mapping[str, str]
    # ops the framework can quantize at all (an op kept FP32 by op_wise still is; a conv under dynamic
    # INT8 is not): only those are "fallback" ops when they end up in BF16/FP32
    quantizable: frozenset[str] = frozenset()
    # the recipes to tune, each with its values, off first (None for SmoothQuant, else False)
    recipes: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def op_names(self) -> list[str]:
        return [n for n, _ in self.options]

    def op_options(self, name: str) -> tuple[OpChoice, ...]:
        for n, opts in self.options:
            if n == name:
                return opts
        raise KeyError(name)

    @property
    def size(self) -> int:
        n = len(self.sampling_sizes) * self._recipe_combinations
        for _, opts in self.options:
            n *= len(opts)
        return n

    def quantized_size(self) -> int:
        """Size of the space restricted to quantized choices (what `exhaustive` walks)."""
        n = len(self.sampling_sizes) * self._recipe_combinations
        for _, opts in self.options:
            n *= max(1, sum(o.quantized for o in opts))
        return n

    @property
    def _recipe_combinations(self) -> int:
        n = 1
        for _, values in self.recipes:
            n *= len(values)
        return n

    # -- index encoding: dimension 0 is the sampling size, then one per recipe, then one per op -------
    @property
    def global_dimensions(self) -> list[str]:
        """The names of the dimensions before the ops': the sampling size, then each recipe."""
        return ["sampling_size", *(n for n, _ in self.recipes)]

    @property
    def radices(self) -> list[int]:
        return ([len(self.sampling_sizes)] + [len(v) for _, v in self.recipes]
                + [len(opts) for _, opts in self.options])

    def config_at(self, index: Iterable[int], note: str = "") -> TuneConfig:
        """The configuration at a per-dimension index (see `radices`)."""
        idx = list(index)
        g = 1 + len(self.recipes)
        ops = tuple((n, opts[i]) for (n, opts), i in zip(self.options, idx[g:], strict=True))
        recipes = recipes_of({n: values[i] for (n, values), i in zip(self.recipes, idx[1:g], strict=True)})
        return TuneConfig(self.approach, self.sampling_sizes[idx[0]], ops, note, recipes)

    def index_of(self, cfg: TuneConfig) -> list[int]:
        return ([self.sampling_sizes.index(cfg.sampling_size)]
                + [values.index(cfg.recipe(n) if cfg.recipe(n) is not None else values[0])
                   for n, values in self.recipes]
                + [opts.index(c) for (_, c), (_, opts) in zip(cfg.ops, self.options, strict=True)])

    def config_at_flat(self, flat: int, note: str = "") -> TuneConfig:
        """The configuration at a flat index in [0, size): mixed-radix digits, last op fastest."""
        digits = []
        for r in reversed(self.radices):
            flat, d = divmod(flat, r)
            digits.append(d)
        return self.config_at(reversed(digits), note)

    def one_hot(self, points: Sequence[Sequence[int]]) -> np.ndarray:
        """0/1 rows for points given as per-dimension indices (see `radices`, `index_of`), one block
        per dimension: the encoding model-based strategies fit on."""
        radices = self.radices
        offsets = np.concatenate([[0], np.cumsum(radices)[:-1]]).astype(int)
        out = np.zeros((len(points), int(sum(radices))))
        if len(points):
            out[np.arange(len(points))[:, None], offsets[None, :] + np.asarray(points, dtype=int)] = 1.0
        return out

    def canonical(self, cfg: TuneConfig) -> TuneConfig | None:
        """`cfg` with its ops in model order (a config read back from a JSON object may list them in
        any order: its id does not depend on it), or None when it is not a point of this space."""
        if cfg.approach != self.approach or cfg.sampling_size not in self.sampling_sizes:
            return None
        choices = dict(cfg.ops)
        if len(choices) != len(cfg.ops) or set(choices) != set(self.op_names):
            return None
        if not all(choices[n] in opts for n, opts in self.options):
            return None
        tuned = dict(self.recipes)
        if any(n not in tuned or v not in tuned[n] for n, v in cfg.recipes):
            return None
        return TuneConfig(self.approach, cfg.sampling_size, tuple((n, choices[n]) for n in self.op_names), cfg.note,
                          cfg.recipes)

    def contains(self, cfg: TuneConfig) -> bool:
        return self.canonical(cfg) is not None

    def model_wise_configs(self) -> list[TuneConfig]:
        """Stage-1 configurations: every global combination of quantization settings, applied to
        every op that supports it (others keep their first quantized option), deduplicated, in a
        deterministic order (recommended values first)."""
        combos: list[tuple[QSpec | None, QSpec | None]] = []
        seen_w: list[QSpec | None] = []
        seen_a: list[QSpec | None] = []
        for _, opts in self.options:
            for o in opts:
                if o.quantized:
                    if o.weight not in seen_w:
                        seen_w.append(o.weight)
                    if o.activation not in seen_a:
                        seen_a.append(o.activation)
        combos = list(itertools.product(seen_w or [None], seen_a or [None]))
        configs: list[TuneConfig] = []
        seen: set[str] = set()
        for ss in self.sampling_sizes:
            for w, a in combos:
                ops = []
                for name, opts in self.options:
                    q = [o for o in opts if o.quantized]
                    if not q:  # nothing to quantize here (e.g. a conv under dynamic INT8): as in FP32
                        ops.append((name, OpChoice("fp32") if OpChoice("fp32") in opts else opts[0]))
                        continue
                    # the exact combination, else the closest option (e.g. an op without weights, or
                    # whose activation dtype differs): same activation settings first, then weight
                    pick = max(q, key=lambda o: _closeness(o, w, a))
                    ops.append((name, pick))
                note = "model-wise " + ", ".join(
                    s for s in (
                        f"w:{w.scheme}/{w.granularity}/{w.algorithm}" if w else "",
                        f"a:{a.scheme}/{a.algorithm}" if a else "a:dynamic",
                        f"n={ss}" if len(self.sampling_sizes) > 1 else "",
                    ) if s
                )
                cfg = TuneConfig(self.approach, ss, tuple(ops), note)
                if cfg.id not in seen:
                    seen.add(cfg.id)
                    configs.append(cfg)
        return configs


def _tensor_values(
    op: OpCapability, tensor: str, key: str, *constraints: Mapping[str, Any] | None
) -> list[str]:
    """Allowed values of one tensor key for one op: capability ∩ constraints (or the op's
    recommended defaults when nobody constrains the key). Raises on values outside the capability."""
    cap = getattr(op, tensor)
    if cap is None:
        return []
    allowed = list(cap[key])
    explicit = False
    for c in constraints:
        vals = _as_list(((c or {}).get(tensor) or {}).get(key))
        if vals is None:
            continue
        explicit = True
        vals = [str(v) for v in vals if str(v) not in FALLBACK_DTYPES]
        if key == "dtype" and not vals:
            allowed = []
            continue
        bad = [v for v in vals if v not in cap[key]]
        if bad:
            why = op.unavailable.get(f"{tensor}.{key}={bad[0]}")
            raise ConfigError(
                f"{tensor}.{key}={bad[0]!r} is not supported for op {op.name!r} ({op.type})"
                f"{': ' + why if why else ''}; valid choices: {list(cap[key])}"
            )
        allowed = [v for v in allowed if v in vals]
    if not explicit and key in op.defaults.get(tensor, {}):
        allowed = [v for v in allowed if v in op.defaults[tensor][key]]
    return allowed


def _quantized_allowed(*constraints: Mapping[str, Any] | None) -> bool:
    """False when some dtype constraint (of either tensor) lists no quantized dtype, e.g.
    `activation: {dtype: [fp32]}`: the op must not be quantized, even where it has no such tensor
    (dynamic quantization has no activation capability)."""
    for c in constraints:
        for tensor in ("weight", "activation"):
            vals = _as_list(((c or {}).get(tensor) or {}).get("dtype"))
            if vals is not None and not any(str(v) in QUANT_DTYPES for v in vals):
                return False
    return True


def _fallbacks(op: OpCapability, *constraints: Mapping[str, Any] | None) -> list[str]:
    allowed = list(op.fallback)
    for c in constraints:
        if not c:
            continue
        for tensor in ("weight", "activation"):
            vals = _as_list((c.get(tensor) or {}).get("dtype"))
            if vals is None:
                continue
            vals = [str(v) for v in vals]
            bad = [v for v in vals if v not in (*QUANT_DTYPES, *FALLBACK_DTYPES)]
            if bad:
                raise ConfigError(
                    f"{tensor}.dtype={bad[0]!r} is not a known dtype for op {op.name!r}; "
                    f"valid choices: {[*QUANT_DTYPES, *FALLBACK_DTYPES]}"
                )
            for v in vals:
                if v in FALLBACK_DTYPES and v not in op.fallback:
                    why = op.unavailable.get(f"dtype={v}", "not on this machine/framework")
                    raise ConfigError(
                        f"{tensor}.dtype={v!r} is not supported for op {op.name!r}: {why}; "
                        f"valid choices: {[*QUANT_DTYPES, *op.fallback]}"
                    )
            allowed = [v for v in allowed if v in vals]
    return allowed


def _check_keys(where: str, c: Mapping[str, Any] | None) -> None:
    if not c:
        return
    for tensor, spec in c.items():
        if tensor not in ("weight", "activation"):
            raise ConfigError(f"{where}: unknown key {tensor!r}; valid keys: ['weight', 'activation']")
        for key in spec or {}:
            if key not in TENSOR_KEYS:
                raise ConfigError(f"{where}.{tensor}: unknown key {key!r}; valid keys: {list(TENSOR_KEYS)}")


def match_op_wise(op_names: Iterable[str], op_wise: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Map each op to its op_wise constraint. Keys are exact op names or regular expressions
    (full match); an exact name wins over a pattern. A key matching no op is an error."""
    names = list(op_names)
    result: dict[str, Mapping[str, Any]] = {}
    for key, spec in (op_wise or {}).items():
        _check_keys(f"op_wise[{key!r}]", spec)
        if key in names:
            result[key] = spec
            continue
        try:
            pat = re.compile(key)
        except re.error as e:
            raise ConfigError(f"op_wise key {key!r} is neither an op name nor a valid regex ({e}); "
                              f"valid op names: {names}") from None
        hits = [n for n in names if pat.fullmatch(n)]
        if not hits:
            raise ConfigError(f"op_wise key {key!r} matches no op; valid op names: {names}")
        for n in hits:
            result.setdefault(n, spec)
    return result


def check_approach(approach: str) -> None:
    if approach not in APPROACHES:
        raise ConfigError(f"quantization.approach={approach!r} is unknown; valid choices: {list(APPROACHES)}")


def recipe_dimensions(recipes: Mapping[str, Any] | None, supported: Sequence[str], framework: str,
                      approach: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """The recipes to tune (`quantization.recipes`: smooth_quant = its alphas, cle and bias_correction =
    true/false), each with its values, off first; a recipe set on that `framework` does not support, a
    bad alpha or value raises a ConfigError naming it."""
    dims = {}
    for name, value in (recipes or {}).items():
        if name not in RECIPES:
            raise ConfigError(f"quantization.recipes.{name} is unknown; valid choices: {list(RECIPES)}")
        if name == "smooth_quant":
            alphas = _as_list(value) or []
            if any(not isinstance(a, int | float) or isinstance(a, bool) or not 0 < a <= 1 for a in alphas):
                raise ConfigError(f"quantization.recipes.smooth_quant={value!r}: each alpha (the migration "
                                  "strength) must be a number in (0, 1]; null or [] = off")
            on: tuple[Any, ...] = tuple(dict.fromkeys(float(a) for a in alphas))
            off: Any = None
        else:
            if not isinstance(value, bool):
                raise ConfigError(f"quantization.recipes.{name}={value!r} must be true (tune it) or false")
            on, off = ((True,) if value else ()), False
        if not on:
            continue
        if name not in supported:
            raise ConfigError(f"quantization.recipes.{name} is not available with framework={framework}; valid "
                              f"choices there: {list(supported) or 'none'}")
        if approach == "quant_aware_training":
            raise ConfigError(f"quantization.recipes.{name}: recipes apply to post-training quantization, not "
                              "quant_aware_training (training adapts the weights itself)")
        dims[name] = (off, *on)
    return tuple((n, dims[n]) for n in RECIPES if n in dims)


def build_space(
    capabilities: list[OpCapability],
    approach: str,
    sampling_size: int | list[int],
    model_wise: Mapping[str, Any] | None = None,
    op_wise: Mapping[str, Any] | None = None,
    recipes: tuple[tuple[str, tuple[Any, ...]], ...] = (),
) -> TuningSpace:
    """Capabilities ∩ model_wise ∩ op_wise, with `recipes` (see `recipe_dimensions`) as more dimensions.
    Every bad value raises a ConfigError naming it."""
    check_approach(approach)
    sizes = _as_list(sampling_size) or []
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in sizes):
        raise ConfigError(
            f"quantization.calibration.sampling_size={sampling_size!r} must be a positive int or a list of them"
        )
    if not capabilities:
        raise ConfigError("the model has no op that this framework can quantize")
    _check_keys("model_wise", model_wise)
    per_op = match_op_wise([c.name for c in capabilities], op_wise)
    options = []
    for op in capabilities:
        ow = per_op.get(op.name)
        cons = (model_wise, ow)
        choices: list[OpChoice] = []
        if op.quantizable and _quantized_allowed(*cons):
            w_vals = {k: _tensor_values(op, "weight", k, *cons) for k in TENSOR_KEYS}
            a_vals = {k: _tensor_values(op, "activation", k, *cons) for k in TENSOR_KEYS}
            ws = [QSpec(*v) for v in itertools.product(*(w_vals[k] for k in TENSOR_KEYS))] if op.weight else [None]
            acts = (
                [QSpec(*v) for v in itertools.product(*(a_vals[k] for k in TENSOR_KEYS))] if op.activation else [None]
            )
            choices = [OpChoice("int8", w, a) for a in acts for w in ws]
        choices += [OpChoice(d) for d in _fallbacks(op, *cons)]
        if not choices:
            raise ConfigError(
                f"op {op.name!r} ({op.type}) has no option left after model_wise/op_wise constraints "
                f"(capability: weight={dict(op.weight or {})}, activation={dict(op.activation or {})}, "
                f"fallback={list(op.fallback)})"
            )
        options.append((op.name, tuple(choices)))
    return TuningSpace(approach, tuple(dict.fromkeys(sizes)), tuple(options), {c.name: c.type for c in capabilities},
                       frozenset(c.name for c in capabilities if c.quantizable and (c.weight or c.activation)),
                       tuple(recipes))
