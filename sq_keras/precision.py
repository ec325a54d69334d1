"""Dtype policies: choosing one for the machine at hand, and a model's copy under another.

```python
policy = set_policy("auto")          # e.g. "mixed_bfloat16" on a CPU with AMX
exact = to_policy(model, "float32")  # what apps.evaluate attacks and a float32 export serves
```
"""

import os

import keras
import tensorflow as tf

POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

# CPU flags whose presence means bfloat16 matmuls/convolutions run natively
# (oneDNN uses AVX512-BF16 or AMX); elsewhere bfloat16 is emulated and slow.
_FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# `ONEDNN_MAX_CPU_ISA` caps the instructions oneDNN uses (its CPU dispatcher
# control): capped at one of these it uses neither AVX512-BF16 nor AMX, so
# bfloat16 is emulated as on a CPU without them ...
_ISA_CAPS_WITHOUT_BF16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)
# ... and capped at one of these, AVX512-BF16 but not AMX.
_ISA_CAPS_WITHOUT_AMX = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512")
# oneDNN reads the cap's older name when the new one is unset or empty.
_ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def onednn_isa_cap_setting():
    """`(variable, cap)`: the environment variable that caps oneDNN's
    instructions and the cap, upper-case; None when no cap is set or it is
    `ALL`/`DEFAULT`."""
    for variable in _ISA_CAP_VARIABLES:
        cap = os.environ.get(variable, "").strip().upper()
        if cap:
            return None if cap in ("ALL", "DEFAULT") else (variable, cap)
    return None


def onednn_isa_cap():
    """The instruction set oneDNN is capped at, upper-case, or None."""
    setting = onednn_isa_cap_setting()
    return None if setting is None else setting[1]


def native_bfloat16_flags():
    """The CPU flags of native bfloat16 that this machine has and oneDNN may
    use (empty: bfloat16 is emulated)."""
    cap = onednn_isa_cap()
    usable = _FAST_BF16_CPU_FLAGS
    if cap in _ISA_CAPS_WITHOUT_BF16:
        usable = ()
    elif cap in _ISA_CAPS_WITHOUT_AMX:
        usable = ("avx512_bf16",)
    flags = _cpu_flags()
    return tuple(flag for flag in usable if flag in flags)


def resolve_policy(name):
    """Maps a policy name, possibly "auto", to a concrete Keras policy name.

    "auto" picks mixed_float16 when a GPU is visible, mixed_bfloat16 on a CPU
    with native bfloat16 instructions that oneDNN may use (measured 1.6-3.7x
    faster than float32 on such a CPU; `ONEDNN_MAX_CPU_ISA=AVX2` forbids
    them), and float32 otherwise (float16 on a CPU is emulated and
    two orders of magnitude slower).

    Raises:
        ValueError: If `name` is not one of `POLICIES`.
    """
    if name not in POLICIES:
        raise ValueError(f"Unknown mixed-precision policy {name!r}. Valid: {', '.join(POLICIES)}.")
    if name != "auto":
        return name
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if native_bfloat16_flags():
        return "mixed_bfloat16"
    return "float32"


def set_policy(name):
    """Resolves `name` and sets it as Keras's global dtype policy; returns it."""
    policy = resolve_policy(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy


# Layers whose weights only enter through `cast(weight, compute_dtype)`: with
# a mixed policy they may as well store them in the compute dtype (the same
# rounding, done once instead of at every call).
_CAST_ONLY_LAYERS = frozenset(
    {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Dense"}
)


def _output_names(config):
    entries = config.get("output_layers", [])
    if entries and isinstance(entries[0], str):  # A single output: [name, 0, 0].
        entries = [entries]
    return {entry[0] for entry in entries}


def _set_policy(layers, *, policy, compute_policy, outputs):
    """Sets the dtype policy in layer configs, recursing into nested models."""
    for layer in layers:
        if layer["class_name"] in ("InputLayer", "SoftQuantization"):
            continue
        if "layers" in layer["config"]:  # A nested model.
            _set_policy(
                layer["config"]["layers"],
                policy=policy,
                compute_policy=compute_policy,
                outputs=outputs,
            )
        elif layer["config"].get("name") not in outputs:
            cast_only = layer["class_name"] in _CAST_ONLY_LAYERS
            layer["config"]["dtype"] = compute_policy if cast_only else policy


def to_policy(model, policy, *, weights_in_compute_dtype=True):
    """Rebuilds a functional model with `policy` on every layer, nested models'
    included, but the inputs, the soft quantizers and the output layers (which
    stay float32).

    The copy is for attacks and exports, which never update weights: with a
    mixed policy ("mixed_bfloat16"), plain convolution and Dense layers keep
    their weights in the compute dtype if `weights_in_compute_dtype` (outputs
    identical, no per-call cast of every kernel).

    Args:
        model: A functional `keras.Model`.
        policy: Keras dtype policy name, e.g. "float32" or "mixed_bfloat16".
        weights_in_compute_dtype: Store cast-only layers' weights in the
            compute dtype of a mixed policy.

    Returns:
        A new `keras.Model` with the same weights.
    """
    config = model.get_config()
    compute_policy = policy
    if weights_in_compute_dtype and policy.startswith("mixed_"):
        compute_policy = policy[len("mixed_") :]
    _set_policy(
        config.get("layers", []),
        policy=policy,
        compute_policy=compute_policy,
        outputs=_output_names(config),
    )
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt
