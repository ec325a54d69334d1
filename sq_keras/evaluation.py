"""Robustness evaluation: an attack suite, a report and gradient-masking checks.

```python
from sq_keras import evaluation

target = evaluation.load_target("runs/mnist_sq_noisy")      # model_dir, .keras or SavedModel
images, labels = evaluation.load_examples("mnist", "test", num_examples=500)
report = evaluation.evaluate(
    target, images, labels,
    attacks=evaluation.resolve_attacks(["strong"]),
    eps_values=[0.3],                     # LARGE_EPS (0.5) is appended for the sweep
    settings=evaluation.AttackSettings(pgd_steps=100, restarts=5),
    source=evaluation.load_target("runs/mnist_natural"),    # for "transfer"
)
evaluation.write_report(report, "runs/mnist_sq_noisy/evaluation.json")
print(evaluation.format_table(report))
```

Accuracies in the report are percentages of the evaluated examples. An example
counts as robust to an attack only if it is classified correctly both clean
and after the attack; it counts towards `worst_case_accuracy` only if every
attack run at that eps failed on it.

Masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
section 5 and appendix checklist), each `passed` True/False or None when it
could not be run:

* `accuracy_decreases_with_eps`: every attack and the worst case are
  non-increasing along the eps sweep (within `SLACK` points).
* `chance_at_large_eps`: at the largest eps the worst case is at or below
  chance (100 / num_classes). At eps = 0.5 every image in [0, 1] can be moved
  to the constant grey image 0.5, so no classifier can stay above chance
  there; an attack that leaves it higher is failing, not the model robust.
* `iterative_beats_single_step`: PGD/APGD never leave more than `SLACK`
  points more accuracy than FGSM.
* `pgd_steps_converged`: doubling the PGD steps moves accuracy by < 1 point.
* `gradient_free_not_stronger`: Square does not beat the best plain
  white-box attack by more than 1 point.
* `transfer_not_stronger`: the transfer attack does not beat it either.
* `bpda_run`: a BPDA attack ran whenever the model holds a quantizer.
* `plain_gradients_not_masked`: BPDA does not beat plain gradient attacks by
  more than 1 point.
* `zero_gradients`: under 1% of examples have an all-zero input gradient of
  the margin loss (the margin does not saturate like the cross-entropy).
"""

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

import sq_keras.layers  # noqa: F401  (registers SoftQuantization for load_model)
from sq_keras import attacks as attack_lib
from sq_keras import data
from sq_keras import export

ATTACKS = (
    "fgsm",
    "pgd",
    "pgd_cw",
    "apgd_ce",
    "apgd_dlr",
    "square",
    "transfer",
    "bpda_identity",
    "bpda_smooth",
)
PRESETS = {
    "strong": ATTACKS,
    "fast": ("fgsm", "pgd", "square"),
}
PLAIN_GRADIENT_ATTACKS = ("fgsm", "pgd", "pgd_cw", "apgd_ce", "apgd_dlr")
ITERATIVE_ATTACKS = ("pgd", "pgd_cw", "apgd_ce", "apgd_dlr")
BPDA_ATTACKS = ("bpda_identity", "bpda_smooth")
DOUBLED = "pgd_2x_steps"
LARGE_EPS = 0.5
SLACK = 1.0  # Points of accuracy tolerated by the masking checks.
ZERO_GRADIENT_SHARE = 1.0  # Percent of examples allowed an all-zero gradient.


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Hyper-parameters shared by the suite.

    Attributes:
        pgd_steps: Steps of PGD, APGD, BPDA and transfer attacks.
        restarts: Random restarts of PGD-based attacks.
        square_queries: Query budget per example of the Square Attack.
        step_size_factor: PGD step size is `step_size_factor * eps /
            pgd_steps` (2.5 as in Madry et al. 2018, so any point of the
            ball is reachable from any start).
        square_p_init: Initial window share of the Square Attack.
        smooth_alpha: Steepness of the "smooth" BPDA stand-in.
        seed: Seed of every random start.
    """

    pgd_steps: int = 100
    restarts: int = 1
    square_queries: int = 1000
    step_size_factor: float = 2.5
    square_p_init: float = 0.8
    smooth_alpha: float = 10.0
    seed: int = 0

    def __post_init__(self):
        for name in ("pgd_steps", "restarts", "square_queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")


@dataclasses.dataclass
class Target:
    """A model under evaluation.

    Attributes:
        model_fn: Maps float32 images in [0, 1] to float32 logits.
        path: Where it was loaded from.
        keras_model: The `keras.Model`, or None for a SavedModel (no BPDA).
        has_quantizer: Whether the model holds a soft-quantization layer.
        config: The training `config.json` when found beside the model.
        input_shape: `(H, W, C)` the model takes, when known.
    """

    model_fn: object
    path: str
    keras_model: object = None
    has_quantizer: bool = False
    config: dict = dataclasses.field(default_factory=dict)
    input_shape: tuple = None


# ---------------------------------------------------------------------------
# Loading.


# Layers whose weights only enter through `cast(weight, compute_dtype)`: with
# a mixed policy they may as well store them in the compute dtype (the same
# rounding, done once instead of at every call).
_CAST_ONLY_LAYERS = frozenset(
    {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Dense"}
)


def _to_policy(model, policy, *, weights_in_compute_dtype=True):
    """Rebuilds a functional model with `policy` on every layer, nested models'
    included, but the inputs, the soft quantizers and the output layers (which
    stay float32).

    The copy is for attacks, which never update weights: with a mixed policy
    ("mixed_bfloat16"), plain convolution and Dense layers keep their weights
    in the compute dtype if `weights_in_compute_dtype` (outputs identical,
    no per-call cast of every kernel).
    """
    config = model.get_config()
    entries = config.get("output_layers", [])
    if entries and isinstance(entries[0], str):  # A single output: [name, 0, 0].
        entries = [entries]
    outputs = {entry[0] for entry in entries}
    compute_policy = policy
    if weights_in_compute_dtype and policy.startswith("mixed_"):
        compute_policy = policy[len("mixed_") :]

    def set_policy(layers):
        for layer in layers:
            if layer["class_name"] in ("InputLayer", "SoftQuantization"):
                continue
            if "layers" in layer["config"]:  # A nested model.
                set_policy(layer["config"]["layers"])
            elif layer["config"].get("name") not in outputs:
                cast_only = layer["class_name"] in _CAST_ONLY_LAYERS
                layer["config"]["dtype"] = compute_policy if cast_only else policy

    set_policy(config.get("layers", []))
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _read_config(directory):
    path = os.path.join(directory, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _saved_model_dir(path):
    """The SavedModel under `path` (itself or its highest version), or None."""
    if not os.path.isdir(path):
        return None
    try:
        return export.latest_version_dir(path)
    except FileNotFoundError:
        return None


def _signature_shape(loaded):
    """`(H, W, C)` of a SavedModel's `serving_default` images, if declared."""
    try:
        (spec,) = loaded.signatures["serving_default"].structured_input_signature[1].values()
        shape = tuple(spec.shape[1:])
    except (KeyError, ValueError, AttributeError):
        return None
    return shape if shape and all(d is not None for d in shape) else None


def load_target(path, *, policy="float32"):
    """Loads a model to evaluate.

    Args:
        path: A `.keras` file, a training model directory holding
            `model.keras` (white-box attacks including BPDA), or a SavedModel
            directory, or a TF-Serving directory of numbered versions (the
            highest is used), whose `serving_default` signature takes float32
            `images` in [0, 1] and returns `logits` (every attack but BPDA).
        policy: Keras dtype policy for a functional `.keras` model's hidden
            layers, whatever policy it was trained under: "float32" (exact)
            or e.g. "mixed_bfloat16" (faster on CPUs with native bfloat16;
            convolution and Dense weights are then stored in bfloat16, which
            gives the same outputs); quantizers and logits stay float32.
            None keeps the saved policy.

    Returns:
        A `Target`.

    Raises:
        FileNotFoundError: Nothing loadable at `path`.
    """
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"Model path {path!r} does not exist.")
    config = {}
    keras_file = None
    if os.path.isfile(path) and path.endswith(".keras"):
        keras_file = path
        config = _read_config(os.path.dirname(path))
    elif os.path.isfile(os.path.join(path, "model.keras")):
        keras_file = os.path.join(path, "model.keras")
        config = _read_config(path)
    if keras_file is not None:
        model = keras.models.load_model(keras_file, compile=False)
        if policy is not None and "output_layers" in model.get_config():
            model = _to_policy(model, policy)

        # The model's outputs, with the faster input gradients attacks need.
        fast_fn = attack_lib.input_gradient_model(model)

        def model_fn(images):
            return tf.cast(fast_fn(images), tf.float32)

        return Target(
            model_fn=model_fn,
            path=path,
            keras_model=model,
            has_quantizer=attack_lib.has_quantizer(model),
            config=config,
            input_shape=tuple(model.input_shape[1:]),
        )
    saved_model_dir = _saved_model_dir(path)
    if saved_model_dir is not None:
        path = saved_model_dir
        loaded = tf.saved_model.load(path)

        def saved_model_fn(images):
            # Looked up on every call so the closure keeps `loaded` (and its
            # variables) alive.
            signature = loaded.signatures["serving_default"]
            return tf.cast(signature(images=tf.cast(images, tf.float32))["logits"], tf.float32)

        names = [v.name for v in getattr(loaded, "variables", [])]
        return Target(
            model_fn=saved_model_fn,
            path=path,
            keras_model=None,
            has_quantizer=any("threshold" in name or "quantiz" in name for name in names),
            config=config,
            input_shape=_signature_shape(loaded),
        )
    raise FileNotFoundError(
        f"No model at {path!r}: expected a .keras file, a directory holding "
        "model.keras (training --model_dir), a SavedModel directory or a directory "
        "of numbered SavedModel versions (training --export_dir)."
    )


def load_examples(dataset, split, *, num_examples=None, data_dir=None):
    """The first `num_examples` of a split as float32 images in [0, 1] and labels."""
    images, labels = data.load_arrays(dataset, split, data_dir=data_dir)
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


# ---------------------------------------------------------------------------
# Attack suite.


def resolve_attacks(names):
    """Expands presets and validates attack names, keeping suite order.

    Raises:
        ValueError: An unknown name; the message lists the valid ones.
    """
    chosen = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name in PRESETS:
            chosen.update(PRESETS[name])
        elif name in ATTACKS:
            chosen.add(name)
        else:
            raise ValueError(
                f"Unknown attack {name!r}. Valid attacks: {', '.join(ATTACKS)}; "
                f"presets: {', '.join(PRESETS)}."
            )
    if not chosen:
        raise ValueError(f"No attack given. Valid attacks: {', '.join(ATTACKS)}.")
    return [name for name in ATTACKS if name in chosen]


def sweep_eps(eps_values, *, add_large_eps=True):
    """Sorted distinct eps values, with `LARGE_EPS` appended when asked.

    Raises:
        ValueError: An eps outside [0, 1] or an empty list.
    """
    values = [float(eps) for eps in eps_values]
    if not values:
        raise ValueError("At least one eps is needed.")
    for eps in values:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1] (pixel units). Received: eps={eps}")
    if add_large_eps and max(values) < LARGE_EPS:
        values.append(LARGE_EPS)
    return sorted(set(values))


def attack_settings(name, eps, settings):
    """The hyper-parameters attack `name` runs with at `eps`, as a dict."""
    step_size = settings.step_size_factor * eps / settings.pgd_steps
    pgd = {
        "attack": "pgd",
        "num_steps": settings.pgd_steps,
        "step_size": step_size,
        "restarts": settings.restarts,
        "random_start": True,
        "seed": settings.seed,
    }
    if name == "fgsm":
        return {"attack": "fgsm", "loss": "ce"}
    if name == "pgd":
        return {**pgd, "loss": "ce"}
    if name == "pgd_cw":
        return {**pgd, "loss": "margin"}
    if name in ("apgd_ce", "apgd_dlr"):
        return {
            "attack": "apgd",
            "num_steps": settings.pgd_steps,
            "loss": name.split("_")[1],
            "seed": settings.seed,
        }
    if name == "square":
        return {
            "attack": "square",
            "max_queries": settings.square_queries,
            "p_init": settings.square_p_init,
            "seed": settings.seed,
        }
    if name == "transfer":
        return {**pgd, "loss": "ce", "crafted_on": "source model"}
    if name in BPDA_ATTACKS:
        stand_in = name.split("_")[1]
        extra = {"smooth_alpha": settings.smooth_alpha} if stand_in == "smooth" else {}
        return {**pgd, "loss": "ce", "stand_in": stand_in, **extra}
    raise ValueError(f"Unknown attack {name!r}.")


def _batch_attack(name, eps, settings, target, source):
    """A tf.function mapping `(x, y)` to `(x_adv, queries or -1)`."""
    params = attack_settings(name, eps, settings)
    kwargs = {
        k: v
        for k, v in params.items()
        if k not in ("attack", "stand_in", "smooth_alpha", "crafted_on")
    }
    model_fn = target.model_fn
    if name in BPDA_ATTACKS:
        model_fn = attack_lib.bpda(
            target.keras_model, stand_in=params["stand_in"], smooth_alpha=settings.smooth_alpha
        )
    elif name == "transfer":
        model_fn = source.model_fn
    attack = {
        "fgsm": attack_lib.fgsm,
        "pgd": attack_lib.pgd,
        "apgd": attack_lib.apgd,
        "square": attack_lib.square,
    }[params["attack"]]

    @tf.function(reduce_retracing=True)
    def run(x, y):
        if params["attack"] == "square":
            return attack(model_fn, x, y, eps=eps, **kwargs)
        x_adv = attack(model_fn, x, y, eps=eps, **kwargs)
        return x_adv, -tf.ones([tf.shape(x)[0]], tf.int32)

    return run


def _distributed(run, strategy):
    """`run(x, y)` with the batch split across the strategy's replicas."""
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return run
    replicas = strategy.num_replicas_in_sync

    def distributed_run(x, y):
        x_parts = np.array_split(x.numpy(), replicas)
        y_parts = np.array_split(y.numpy(), replicas)
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x_parts[ctx.replica_id_in_sync_group])
        )
        ys = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(y_parts[ctx.replica_id_in_sync_group])
        )
        x_adv, used = strategy.run(run, args=(xs, ys))
        gather = strategy.experimental_local_results
        return (
            tf.concat([tf.identity(t) for t in gather(x_adv)], axis=0),
            tf.concat([tf.identity(t) for t in gather(used)], axis=0),
        )

    return distributed_run


def _batches(num, batch_size):
    return [(start, min(start + batch_size, num)) for start in range(0, num, batch_size)]


def _predict(model_fn, images, batch_size):
    predict = tf.function(lambda x: tf.argmax(model_fn(x), -1, output_type=tf.int64))
    return np.concatenate(
        [predict(images[a:b]).numpy() for a, b in _batches(len(images), batch_size)]
    )


def _skip_reason(name, target, source):
    if name == "transfer" and source is None:
        return "no source model given (--source_model)"
    if name in BPDA_ATTACKS:
        if not target.has_quantizer:
            return "model has no SoftQuantization layer"
        if target.keras_model is None:
            return "BPDA needs the Keras model (.keras file or model_dir), not a SavedModel"
    return None


def _progress(iterable, description, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, unit="batch", leave=False)


def run_attack(
    name,
    eps,
    target,
    images,
    labels,
    *,
    settings,
    source=None,
    batch_size=250,
    progress=True,
    description=None,
    strategy=None,
):
    """Runs one attack of the suite over all examples at one eps.

    With a `tf.distribute` strategy of several replicas, each batch is split
    across the replicas and attacked under `strategy.run`.

    Returns:
        `(adversarial images, predictions on them, queries or None, seconds)`.
    """
    if eps == 0.0:
        # Every attack is the identity at eps = 0.
        start = time.perf_counter()
        predictions = _predict(target.model_fn, images, batch_size)
        return images, predictions, None, time.perf_counter() - start
    run = _distributed(_batch_attack(name, eps, settings, target, source), strategy)
    predict = tf.function(lambda x: tf.argmax(target.model_fn(x), -1, output_type=tf.int64))
    adversarial, predictions, queries = [], [], []
    start = time.perf_counter()
    for a, b in _progress(
        _batches(len(images), batch_size), f"{description or name} eps={eps:g}", progress
    ):
        x_adv, used = run(tf.constant(images[a:b]), tf.constant(labels[a:b]))
        adversarial.append(x_adv.numpy())
        predictions.append(predict(x_adv).numpy())
        queries.append(used.numpy())
    seconds = time.perf_counter() - start
    queries = np.concatenate(queries)
    return (
        np.concatenate(adversarial),
        np.concatenate(predictions),
        None if np.all(queries < 0) else queries,
        seconds,
    )


def zero_gradient_shares(model_fn, images, labels, *, batch_size=250):
    """Shares (percent) of examples and of input entries with a zero gradient.

    The gradient is that of the margin loss at the clean input; an example
    counts when its whole gradient is below 1e-12 in absolute value.
    """

    @tf.function
    def gradient(x, y):
        return attack_lib.loss_gradient(model_fn, x, y, "margin")[2]

    zero_examples, zero_entries, entries = 0, 0, 0
    for a, b in _batches(len(images), batch_size):
        g = np.abs(gradient(tf.constant(images[a:b]), tf.constant(labels[a:b])).numpy())
        g = g.reshape(len(g), -1)
        zero_examples += int(np.sum(g.max(axis=1) < 1e-12))
        zero_entries += int(np.sum(g == 0.0))
        entries += g.size
    return 100.0 * zero_examples / len(images), 100.0 * zero_entries / entries


def evaluate(
    target,
    images,
    labels,
    *,
    attacks,
    eps_values,
    settings=AttackSettings(),
    source=None,
    num_classes=None,
    batch_size=250,
    progress=True,
    add_large_eps=True,
    num_shown=8,
    strategy=None,
):
    """Runs the attack suite and builds the report.

    Args:
        target: The `Target` to evaluate.
        images: float32 `[N, H, W, C]` in [0, 1].
        labels: int `[N]`.
        attacks: Attack names, see `resolve_attacks`.
        eps_values: l-inf radii; the first is the primary eps of the report.
        settings: `AttackSettings`.
        source: `Target` to craft the "transfer" attack on.
        num_classes: Number of classes (for chance level); default
            `max(labels) + 1`.
        batch_size: Examples per attack batch.
        progress: Show a progress bar per attack.
        add_large_eps: Append `LARGE_EPS` to the sweep (for the chance check).
        num_shown: Examples kept for the clean-vs-adversarial figure.
        strategy: Optional `tf.distribute` strategy; attack batches are split
            across its replicas.

    Returns:
        The report dict (JSON-serialisable except the `"_examples"` entry,
        which `write_report` turns into a figure and drops).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size}"
        )
    primary = float(eps_values[0])
    all_eps = sweep_eps(eps_values, add_large_eps=add_large_eps)
    num_classes = int(num_classes or int(np.max(labels)) + 1)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    clean_predictions = _predict(target.model_fn, images, batch_size)
    clean_correct = clean_predictions == labels

    report = {
        "model": target.path,
        "num_examples": len(labels),
        "num_classes": num_classes,
        "eps": primary,
        "eps_values": all_eps,
        "large_eps_added": LARGE_EPS
        if LARGE_EPS in all_eps and LARGE_EPS not in eps_values
        else None,
        "has_quantizer": target.has_quantizer,
        "clean_accuracy": round(100.0 * float(np.mean(clean_correct)), 4),
        "attacks": {},
        "skipped": {},
        "settings": dataclasses.asdict(settings),
    }
    robust = {eps: clean_correct.copy() for eps in all_eps}
    shown = {
        "images": images[:num_shown],
        "labels": labels[:num_shown],
        "predictions": clean_predictions[:num_shown],
        "adversarial": {},
    }

    def record(name, eps, adversarial, predictions, queries, seconds, entry_settings=None):
        correct = clean_correct & (predictions == labels)
        robust[eps] &= correct
        entry = report["attacks"].setdefault(
            name,
            {"settings": entry_settings or attack_settings(name, primary, settings), "results": {}},
        )
        result = {
            "robust_accuracy": round(100.0 * float(np.mean(correct)), 4),
            "seconds": round(seconds, 3),
            "images_per_second": round(len(labels) / seconds, 2) if seconds > 0 else None,
        }
        if queries is not None:
            result["mean_queries"] = float(np.mean(queries))
            result["median_queries"] = float(np.median(queries))
        if "step_size" in entry["settings"] and entry_settings is None:
            result["step_size"] = attack_settings(name, eps, settings)["step_size"]
        entry["results"][f"{eps:g}"] = result
        if eps == primary:
            shown["adversarial"][name] = (adversarial[:num_shown], predictions[:num_shown])

    for name in attacks:
        reason = _skip_reason(name, target, source)
        if reason:
            report["skipped"][name] = reason
            continue
        for eps in all_eps:
            record(
                name,
                eps,
                *run_attack(
                    name,
                    eps,
                    target,
                    images,
                    labels,
                    settings=settings,
                    source=source,
                    batch_size=batch_size,
                    progress=progress,
                    strategy=strategy,
                ),
            )

    # The convergence check: the first PGD-type attack run again with 2x steps.
    doubled_of = next(
        (n for n in ("pgd", "pgd_cw", "bpda_identity") if n in report["attacks"]), None
    )
    if doubled_of is not None and primary > 0:
        doubled = dataclasses.replace(settings, pgd_steps=2 * settings.pgd_steps)
        outcome = run_attack(
            doubled_of,
            primary,
            target,
            images,
            labels,
            settings=doubled,
            source=source,
            batch_size=batch_size,
            progress=progress,
            description=DOUBLED,
            strategy=strategy,
        )
        record(
            DOUBLED,
            primary,
            *outcome,
            entry_settings={**attack_settings(doubled_of, primary, doubled), "doubles": doubled_of},
        )

    report["worst_case_accuracy_by_eps"] = {
        f"{eps:g}": round(100.0 * float(np.mean(robust[eps])), 4) for eps in all_eps
    }
    report["worst_case_accuracy"] = report["worst_case_accuracy_by_eps"][f"{primary:g}"]
    report["robust_examples"] = [int(i) for i in np.flatnonzero(robust[primary])][:1000]
    zero_examples, zero_entries = zero_gradient_shares(
        target.model_fn, images, labels, batch_size=batch_size
    )
    report["zero_gradient_examples_percent"] = zero_examples
    report["zero_gradient_entries_percent"] = zero_entries
    report["checks"] = masking_checks(report)
    report["_examples"] = shown
    return report


# ---------------------------------------------------------------------------
# Masking checks.


def _accuracy(report, name, eps):
    entry = report["attacks"].get(name)
    if entry is None:
        return None
    result = entry["results"].get(f"{eps:g}")
    return None if result is None else result["robust_accuracy"]


def _check(passed, message, **numbers):
    return {"passed": passed, "message": message, **numbers}


def masking_checks(report):
    """The gradient-masking checks of the module docstring, as a dict."""
    checks = {}
    eps_values = report["eps_values"]
    primary = report["eps"]
    run = [n for n in report["attacks"] if n != DOUBLED]
    chance = 100.0 / report["num_classes"]

    # 1. Monotone along the sweep.
    if len(eps_values) >= 2:
        violations = []
        curves = {n: [_accuracy(report, n, e) for e in eps_values] for n in run}
        curves["worst_case"] = [report["worst_case_accuracy_by_eps"][f"{e:g}"] for e in eps_values]
        for name, curve in curves.items():
            for (e0, a0), (e1, a1) in zip(zip(eps_values, curve), zip(eps_values[1:], curve[1:])):
                if a0 is not None and a1 is not None and a1 > a0 + SLACK:
                    violations.append(f"{name}: {a0:.1f}% at eps={e0:g} -> {a1:.1f}% at eps={e1:g}")
        checks["accuracy_decreases_with_eps"] = _check(
            not violations,
            "Accuracy rises with eps: " + "; ".join(violations)
            if violations
            else "Accuracy is non-increasing along the eps sweep.",
            violations=violations,
        )
        largest = eps_values[-1]
        worst = report["worst_case_accuracy_by_eps"][f"{largest:g}"]
        checks["chance_at_large_eps"] = _check(
            worst <= chance,
            f"Worst case at eps={largest:g} is {worst:.1f}% vs chance {chance:.1f}%"
            + ("." if worst <= chance else ": the attacks fail where no model can be robust."),
            eps=largest,
            accuracy=worst,
            chance=chance,
        )
    else:
        checks["accuracy_decreases_with_eps"] = _check(None, "Only one eps: no sweep.")
        checks["chance_at_large_eps"] = _check(None, "Only one eps: no sweep.")

    # 2. Iterative attacks at least as strong as FGSM.
    if "fgsm" in report["attacks"] and any(n in report["attacks"] for n in ITERATIVE_ATTACKS):
        violations = []
        for eps in eps_values:
            single = _accuracy(report, "fgsm", eps)
            for name in ITERATIVE_ATTACKS:
                value = _accuracy(report, name, eps)
                if value is not None and single is not None and value > single + SLACK:
                    violations.append(f"{name} {value:.1f}% > fgsm {single:.1f}% at eps={eps:g}")
        checks["iterative_beats_single_step"] = _check(
            not violations,
            "; ".join(violations)
            if violations
            else "Every iterative attack is at least as strong as FGSM.",
            violations=violations,
        )
    else:
        checks["iterative_beats_single_step"] = _check(None, "Needs fgsm and an iterative attack.")

    # 3. Convergence in the number of steps.
    if DOUBLED in report["attacks"]:
        of = report["attacks"][DOUBLED]["settings"]["doubles"]
        base, doubled = _accuracy(report, of, primary), _accuracy(report, DOUBLED, primary)
        change = doubled - base
        checks["pgd_steps_converged"] = _check(
            abs(change) < SLACK,
            f"{of} with 2x steps: {base:.1f}% -> {doubled:.1f}% ({change:+.1f} points)"
            + ("." if abs(change) < SLACK else ": not converged, use more steps."),
            attack=of,
            accuracy=base,
            doubled_accuracy=doubled,
            change=change,
        )
    else:
        checks["pgd_steps_converged"] = _check(None, "Needs a PGD-type attack at eps > 0.")

    # 4./5. Gradient-free and transfer attacks versus plain white-box ones.
    plain = [n for n in PLAIN_GRADIENT_ATTACKS if n in report["attacks"]]
    for check, name in (
        ("gradient_free_not_stronger", "square"),
        ("transfer_not_stronger", "transfer"),
    ):
        if name in report["attacks"] and plain:
            best_plain = min(_accuracy(report, n, primary) for n in plain)
            value = _accuracy(report, name, primary)
            passed = value >= best_plain - SLACK
            checks[check] = _check(
                passed,
                f"{name} {value:.1f}% vs best plain white-box {best_plain:.1f}% at eps={primary:g}"
                + ("." if passed else ": the gradients are masked; trust the stronger attack."),
                accuracy=value,
                best_white_box_accuracy=best_plain,
            )
        else:
            checks[check] = _check(None, f"Needs {name} and a plain gradient attack.")

    # 6. BPDA whenever there is a quantizer.
    bpda = [n for n in BPDA_ATTACKS if n in report["attacks"]]
    if report["has_quantizer"]:
        checks["bpda_run"] = _check(
            bool(bpda),
            "BPDA ran on the quantized model."
            if bpda
            else "The model holds a quantizer but no BPDA attack ran: the result may be masked.",
            attacks=bpda,
        )
    else:
        checks["bpda_run"] = _check(None, "The model holds no quantizer.")
    if bpda and plain:
        best_plain = min(_accuracy(report, n, primary) for n in plain)
        best_bpda = min(_accuracy(report, n, primary) for n in bpda)
        passed = best_bpda >= best_plain - SLACK
        checks["plain_gradients_not_masked"] = _check(
            passed,
            f"BPDA {best_bpda:.1f}% vs plain gradients {best_plain:.1f}% at eps={primary:g}"
            + ("." if passed else ": plain gradient attacks overstate robustness."),
            bpda_accuracy=best_bpda,
            plain_accuracy=best_plain,
        )
    else:
        checks["plain_gradients_not_masked"] = _check(
            None, "Needs BPDA and a plain gradient attack."
        )

    # 7. Zero input gradients.
    share = report["zero_gradient_examples_percent"]
    passed = share < ZERO_GRADIENT_SHARE
    checks["zero_gradients"] = _check(
        passed,
        f"{share:.1f}% of examples have an all-zero input gradient "
        f"({report['zero_gradient_entries_percent']:.1f}% of entries)"
        + ("." if passed else ": gradient attacks cannot move them; use BPDA or Square."),
        examples_percent=share,
        entries_percent=report["zero_gradient_entries_percent"],
    )
    return checks


def failed_checks(report):
    """`(name, message)` of every failed masking check."""
    return [(name, c["message"]) for name, c in report["checks"].items() if c["passed"] is False]


# ---------------------------------------------------------------------------
# Output.


def format_table(report):
    """A plain-text table: robust accuracy per attack and eps, then the checks."""
    eps_values = report["eps_values"]
    names = list(report["attacks"])
    width = max([len(n) for n in names] + [len("worst case")]) + 2
    header = (
        "attack".ljust(width)
        + "".join(f"eps={e:g}".rjust(10) for e in eps_values)
        + "  img/s".rjust(10)
    )
    lines = [
        f"model: {report['model']}  examples: {report['num_examples']}  "
        f"clean accuracy: {report['clean_accuracy']:.2f}%",
        header,
        "-" * len(header),
    ]
    for name in names:
        row = name.ljust(width)
        for eps in eps_values:
            value = _accuracy(report, name, eps)
            row += (f"{value:.2f}" if value is not None else "-").rjust(10)
        result = report["attacks"][name]["results"].get(f"{report['eps']:g}", {})
        speed = result.get("images_per_second")
        row += (f"{speed:.1f}" if speed else "-").rjust(10)
        lines.append(row)
    row = "worst case".ljust(width)
    for eps in eps_values:
        row += f"{report['worst_case_accuracy_by_eps'][f'{eps:g}']:.2f}".rjust(10)
    lines += ["-" * len(header), row]
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    lines.append("masking checks:")
    for name, check in report["checks"].items():
        status = {True: "passed", False: "FAILED", None: "n/a"}[check["passed"]]
        lines.append(f"  [{status:>6}] {name}: {check['message']}")
    return "\n".join(lines)


def plot_sweep(report, path):
    """Robust accuracy vs eps per attack, worst case and chance, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_values = report["eps_values"]
    figure, axes = plt.subplots(figsize=(6, 4))
    for name in report["attacks"]:
        points = [(e, _accuracy(report, name, e)) for e in eps_values]
        points = [(e, a) for e, a in points if a is not None]
        axes.plot(*zip(*points), marker="o", label=name, alpha=0.8)
    axes.plot(
        eps_values,
        [report["worst_case_accuracy_by_eps"][f"{e:g}"] for e in eps_values],
        color="black",
        linewidth=2.5,
        marker="s",
        label="worst case",
    )
    axes.axhline(100.0 / report["num_classes"], color="grey", linestyle="--", label="chance")
    axes.set_xlabel("eps (l-inf, pixel units in [0, 1])")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(-2, 102)
    axes.set_title(f"clean {report['clean_accuracy']:.1f}%")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_examples(report, path, class_names=None):
    """Clean images (top) and their most damaging adversarial version (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = report["_examples"]
    images, labels, clean = shown["images"], shown["labels"], shown["predictions"]
    names = class_names or [str(i) for i in range(report["num_classes"])]
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    for i in range(count):
        chosen, adv_image, adv_prediction = None, images[i], clean[i]
        for name, (adversarial, predictions) in shown["adversarial"].items():
            chosen, adv_image, adv_prediction = name, adversarial[i], predictions[i]
            if predictions[i] != labels[i]:
                break
        for row, (image, title) in enumerate(
            (
                (images[i], f"y={names[labels[i]]} p={names[clean[i]]}"),
                (adv_image, f"{chosen or '-'}\np={names[adv_prediction]}"),
            )
        ):
            axis = axes[row, i]
            axis.imshow(
                np.squeeze(image), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1
            )
            axis.set_title(
                title, fontsize=7, color="red" if row and adv_prediction != labels[i] else "black"
            )
            axis.axis("off")
    figure.suptitle(f"clean (top) vs adversarial at eps={report['eps']:g} (bottom)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_tensorboard(report, logdir, examples_png=None):
    """Scalars per attack (step = eps in thousandths), the table and the figure."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.scalar("clean_accuracy", report["clean_accuracy"], step=0)
        for eps in report["eps_values"]:
            step = int(round(1000 * eps))
            for name in report["attacks"]:
                value = _accuracy(report, name, eps)
                if value is not None:
                    tf.summary.scalar(f"robust_accuracy/{name}", value, step=step)
            tf.summary.scalar(
                "worst_case_accuracy", report["worst_case_accuracy_by_eps"][f"{eps:g}"], step=step
            )
        tf.summary.text("report", "```\n" + format_table(report) + "\n```", step=0)
        if examples_png and os.path.isfile(examples_png):
            image = tf.image.decode_png(tf.io.read_file(examples_png), channels=3)
            tf.summary.image("examples", image[None], step=0)
    writer.flush()
    writer.close()


def write_report(report, output, *, class_names=None, logdir=None):
    """Writes the JSON report and, beside it, the two PNG figures.

    Files: `output` (JSON), `<stem>_sweep.png` (robust accuracy vs eps) and
    `<stem>_examples.png` (clean vs adversarial with predictions), plus
    TensorBoard summaries in `logdir` when given.

    Returns:
        The report as written (without the in-memory examples).
    """
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    stem = os.path.splitext(os.path.abspath(output))[0]
    files = {
        "json": os.path.abspath(output),
        "sweep_plot": f"{stem}_sweep.png",
        "examples_plot": f"{stem}_examples.png",
    }
    plot_sweep(report, files["sweep_plot"])
    plot_examples(report, files["examples_plot"], class_names=class_names)
    if logdir:
        write_tensorboard(report, logdir, files["examples_plot"])
        files["logdir"] = os.path.abspath(logdir)
    written = {k: v for k, v in report.items() if not k.startswith("_")}
    written["files"] = files
    with open(output, "w") as f:
        json.dump(_jsonable(written), f, indent=2)
    return written


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
