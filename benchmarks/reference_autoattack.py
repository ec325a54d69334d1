r"""The `autoattack` preset against the reference AutoAttack (PyTorch).

Ports a Keras MNIST model with a soft-quantization layer to an equivalent
`torch.nn.Module` (same weights; the quantizer's forward pass exactly as the
Keras model serves it, an identity backward pass: BPDA), checks that the
port's logits equal the Keras model's and its predictions match, then attacks
the first N test images at one eps with both:

* the reference AutoAttack (Croce and Hein 2020, fra31/auto-attack),
  `version="standard"` (APGD-CE, APGD-T, FAB-T, Square 5000), on the port;
* sq_keras's `autoattack` preset (the same four attacks as a cascade, through
  the identity BPDA stand-in), through `evaluation.evaluate`,

in one process, in chunks of images that alternate which implementation goes
first, so that a change in the machine's load falls on both alike. Records
per implementation the robust accuracy after each attack, the worst case,
per-attack and wall seconds, and per image where the two disagree; the JSON
is rewritten after every chunk, so an interrupted run keeps what finished.

PyTorch and the reference are not requirements of sq_keras; install them
first (the CPU build of torch):

  pip install torch==2.13.0
  pip install --no-deps /path/to/auto-attack     # a checkout of fra31/auto-attack

Usage:
  python benchmarks/reference_autoattack.py --model=runs/mnist_sq_free \
      --num_examples=500 --chunk_size=100 --reference_commit=a392200
  python benchmarks/reference_autoattack.py --model=runs/mnist_sq_free \
      --split='test[1000:2000]' --num_examples=0 --reference_commit=a392200

A comparison longer than one session runs as parts on adjacent ranges
(`--split=test[1000:1500]`, `--split=test[1500:2000]`, or from where an
interrupted part's `examples_done` stopped), merged by
`benchmarks/reference_comparison.py`.
"""

import dataclasses
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyTorch's OpenMP threads spin while they wait for each other; on two cores
# shared with other jobs a descheduled thread then stalls the rest: one
# forward pass of 4 MNIST images took 172 ms with 2 threads against 5 ms with
# 1 (load average 11). Passive waiting gives 5 ms with 2 threads. TensorFlow's
# own thread pool does not spin this way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks.reference_comparison import agreement  # noqa: E402
from benchmarks.reference_comparison import chunk_figures  # noqa: E402
from benchmarks.reference_comparison import merge  # noqa: E402
from benchmarks.reference_comparison import speed_ratios  # noqa: E402
from benchmarks.reference_comparison import summary  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import provenance  # noqa: E402

try:
    import autoattack  # noqa: E402
    import torch  # noqa: E402
except ImportError as error:
    raise SystemExit(
        f"benchmarks/reference_autoattack.py needs PyTorch and the reference AutoAttack ({error}). "
        "Install them with `pip install torch==2.13.0` (the CPU build) and "
        "`pip install --no-deps <a checkout of fra31/auto-attack>`."
    ) from None

PRESET = "autoattack"
REFERENCE_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
WARM_UP = 4  # Examples of the untimed warm-up runs.

_MODEL = flags.DEFINE_string(
    "model", "runs/mnist_sq_free", "A .keras file or training model_dir of a Sequential-like CNN."
)
_SPLIT = flags.DEFINE_string(
    "split", "test", "Split to attack, with an optional slice: `test`, `test[1000:2000]`."
)
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 500, "First N examples of --split; 0 for all of them."
)
_CHUNK_SIZE = flags.DEFINE_integer(
    "chunk_size", 100, "Examples per chunk; the implementations take turns going first."
)
_EPS = flags.DEFINE_float("eps", 0.3, "l-inf radius in [0, 1] pixel units.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of both implementations.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Examples per attack batch, both sides.")
_THREADS = flags.DEFINE_integer(
    "threads", 2, "Intra-op threads of TensorFlow and of PyTorch (inter-op: 1 for both)."
)
_TOLERANCE = flags.DEFINE_float(
    "tolerance", 1e-4, "Largest |logit difference| allowed between the port and Keras."
)
_REFERENCE_COMMIT = flags.DEFINE_string(
    "reference_commit", None, "Commit of fra31/auto-attack that is installed, for the record."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON file; default results/autoattack/reference_comparison_<N>.json."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset directory; default $SQ_KERAS_DATA_DIR.")


# ---------------------------------------------------------------------------
# The port: Keras layers to torch modules, NCHW inside.


class _QuantizeIdentityBackward(torch.autograd.Function):
    """Forward: the served quantizer; backward: dq/dx := 1 (BPDA identity)."""

    @staticmethod
    def forward(ctx, x, thresholds, alpha, hard):
        diff = x.unsqueeze(-1) - thresholds
        steps = (diff > 0).to(x.dtype) if hard else torch.sigmoid(alpha * diff)
        return steps.mean(dim=-1)

    @staticmethod
    def backward(ctx, upstream):
        return upstream, None, None, None


class TorchSoftQuantization(torch.nn.Module):
    """`SoftQuantization` at inference on NCHW images, identity backward.

    Args:
        thresholds: `[K]` or, per channel, `[C, K]` (Keras's weight).
        alpha: The steepness.
        hard: The exact staircase instead of the sigmoids (the Keras layer's
            `hard` at `training=False`).
    """

    def __init__(self, thresholds, alpha, hard):
        super().__init__()
        thresholds = torch.as_tensor(np.asarray(thresholds, np.float32))
        if thresholds.ndim == 2:  # [C, K] against [N, C, H, W, K].
            thresholds = thresholds[:, None, None, :]
        self.register_buffer("thresholds", thresholds)
        self.alpha = float(alpha)
        self.hard = bool(hard)

    def forward(self, x):
        return _QuantizeIdentityBackward.apply(x, self.thresholds, self.alpha, self.hard)


class KerasFlatten(torch.nn.Module):
    """Flattens NCHW features in Keras's NHWC order, for the Dense after it."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1) if x.ndim == 4 else x.flatten(1)


def _activation(layer):
    name = layer.get_config().get("activation", "linear")
    if name == "relu":
        return [torch.nn.ReLU()]
    if name == "linear":
        return []
    raise ValueError(f"Cannot port activation {name!r} of layer {layer.name!r}.")


def _parameter(array):
    return torch.nn.Parameter(torch.as_tensor(np.ascontiguousarray(array, np.float32)))


def _port_conv2d(layer):
    config = layer.get_config()
    if config["padding"] == "same" and tuple(config["strides"]) != (1, 1):
        raise ValueError(f"Cannot port {layer.name!r}: 'same' padding with strides.")
    kernel, *bias = [w.numpy() for w in layer.weights]
    conv = torch.nn.Conv2d(
        kernel.shape[2],
        kernel.shape[3],
        kernel.shape[:2],
        stride=tuple(config["strides"]),
        padding=config["padding"],
        dilation=tuple(config["dilation_rate"]),
        bias=bool(bias),
    )
    conv.weight = _parameter(kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW.
    if bias:
        conv.bias = _parameter(bias[0])
    return [conv, *_activation(layer)]


def _port_max_pooling2d(layer):
    config = layer.get_config()
    if config["padding"] != "valid":
        raise ValueError(f"Cannot port {layer.name!r}: padding {config['padding']!r}.")
    return [torch.nn.MaxPool2d(tuple(config["pool_size"]), stride=tuple(config["strides"]))]


def _port_dense(layer):
    kernel, *bias = [w.numpy() for w in layer.weights]
    dense = torch.nn.Linear(kernel.shape[0], kernel.shape[1], bias=bool(bias))
    dense.weight = _parameter(kernel.T)
    if bias:
        dense.bias = _parameter(bias[0])
    return [dense, *_activation(layer)]


def _port_soft_quantization(layer):
    return [TorchSoftQuantization(layer.thresholds.numpy(), layer.alpha.numpy(), layer.hard)]


PORTS = {
    "InputLayer": lambda layer: [],
    "SoftQuantization": _port_soft_quantization,
    "Conv2D": _port_conv2d,
    "MaxPooling2D": _port_max_pooling2d,
    "Flatten": lambda layer: [KerasFlatten()],
    "Dense": _port_dense,
    "Activation": _activation,
}


def port_model(model):
    """A `torch.nn.Sequential` computing `model`'s logits from NCHW images.

    Args:
        model: A `keras.Model` whose layers form a chain of the `PORTS` kinds,
            channels last.

    Raises:
        ValueError: A layer that is not in `PORTS` or a setting it cannot port.
    """
    modules = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in PORTS:
            raise ValueError(f"Cannot port layer {layer.name!r} of kind {kind}.")
        modules += PORTS[kind](layer)
    return torch.nn.Sequential(*modules).eval()


def to_nchw(images):
    """float32 NHWC numpy images as an NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def torch_logits(module, images, batch_size):
    with torch.no_grad():
        parts = [
            module(to_nchw(images[a : a + batch_size])) for a in range(0, len(images), batch_size)
        ]
    return torch.cat(parts).numpy()


def keras_logits(model_fn, images, batch_size):
    parts = [
        model_fn(tf.constant(images[a : a + batch_size])) for a in range(0, len(images), batch_size)
    ]
    return np.concatenate([p.numpy() for p in parts])


def check_port(module, model_fn, images, *, eps, seed, tolerance, batch_size):
    """Compares the port with the served Keras model on `images` and on a
    random point of each one's eps-ball; returns the figures.

    Raises:
        RuntimeError: A logit differs by more than `tolerance` or a
            prediction differs.
    """
    noise = np.random.default_rng(seed).uniform(-eps, eps, images.shape).astype(np.float32)
    figures = {}
    for name, x in (("clean", images), ("random_in_ball", np.clip(images + noise, 0.0, 1.0))):
        ours, theirs = keras_logits(model_fn, x, batch_size), torch_logits(module, x, batch_size)
        difference = float(np.max(np.abs(ours - theirs)))
        mismatches = int(np.sum(ours.argmax(-1) != theirs.argmax(-1)))
        figures[name] = {
            "max_abs_logit_difference": difference,
            "prediction_mismatches": mismatches,
        }
        if difference > tolerance or mismatches:
            raise RuntimeError(
                f"The torch port does not match the Keras model on {name} images: largest "
                f"|logit difference| {difference:.3g} (allowed {tolerance:g}), {mismatches} "
                "predictions differ. Check the layer ports (NHWC/NCHW, flatten order)."
            )
    return figures


# ---------------------------------------------------------------------------
# The reference, timed per attack.


class _AttackLog:
    """Wraps each reference attack's `perturb` to time it and count the
    images it breaks (the reference's own test: argmax of the logits)."""

    def __init__(self, module):
        self.module = module
        self.rows = {}

    def wrap(self, name, perturb):
        def timed(x, y):
            start = time.perf_counter()
            adversarial = perturb(x, y)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                broken = int((self.module(adversarial).argmax(1) != y).sum())
            row = self.rows.setdefault(name, {"seconds": 0.0, "attacked": 0, "broken": 0})
            row["seconds"] += seconds
            row["attacked"] += len(y)
            row["broken"] += broken
            return adversarial

        return timed


def run_reference(module, images, labels, *, eps, seed, batch_size):
    """The reference's standard AutoAttack on `images`; returns the chunk's
    figures: robust flags per image and per attack counts and seconds."""
    adversary = autoattack.AutoAttack(
        module, norm="Linf", eps=eps, seed=seed, version="standard", device="cpu", verbose=False
    )
    log = _AttackLog(module)
    # One object serves both uses of APGD and of FAB; standard runs each once.
    for name, attack in (
        ("apgd-ce", adversary.apgd),
        ("apgd-t", adversary.apgd_targeted),
        ("fab-t", adversary.fab),
        ("square", adversary.square),
    ):
        attack.perturb = log.wrap(name, attack.perturb)
    x, y = to_nchw(images), torch.from_numpy(labels)
    start = time.perf_counter()
    _, y_adv = adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    seconds = time.perf_counter() - start
    clean_correct = torch_logits(module, images, batch_size).argmax(-1) == labels
    robust = y_adv.numpy() == labels
    return chunk_figures(clean_correct, robust, log.rows, seconds, REFERENCE_ATTACKS)


# ---------------------------------------------------------------------------
# sq_keras's preset.


def autoattack_plan(target, seed):
    """The `autoattack` preset's plan on `target` with `seed`."""
    return evaluation.REGISTRY.plan(
        [PRESET], evaluation.AttackSettings(seed=seed), target=target, explicit=["seed"]
    )


def evaluate_preset(target, images, labels, plan, *, eps, batch_size):
    """`(report, wall seconds)` of `plan` on the images, as `apps.evaluate` runs it."""
    start = time.perf_counter()
    report = evaluation.evaluate(
        target,
        images,
        labels,
        attacks=plan.attacks,
        eps_values=[eps],
        settings=plan.settings,
        batch_size=batch_size,
        progress=False,
        add_large_eps=False,
        num_shown=0,
        worst_case_only=plan.worst_case_only,
    )
    return report, time.perf_counter() - start


def run_ours(target, images, labels, plan, *, eps, batch_size):
    """The preset on `images`; the chunk's figures, as `run_reference`'s."""
    report, seconds = evaluate_preset(target, images, labels, plan, eps=eps, batch_size=batch_size)
    clean = keras_logits(target.model_fn, images, batch_size).argmax(-1) == labels
    robust = np.zeros(len(labels), bool)
    robust[report.robust_examples] = True
    rows, left = {}, int(np.sum(clean))
    for name in plan.attacks:
        result = report.attacks[name]["results"][evaluation.eps_key(eps)]
        after = int(round(result["robust_accuracy"] * len(labels) / 100.0))
        rows[name] = {
            "seconds": result["seconds"],
            "attacked": result["attacked_examples"],
            "broken": left - after,
        }
        left = after
    return chunk_figures(clean, robust, rows, seconds, plan.attacks)


def warm_up(module, target, images, labels, *, eps, seed, batch_size):
    """Untimed first calls: a forward and backward pass of the port, and the
    preset with tiny budgets (TensorFlow traces its attack functions)."""
    x = to_nchw(images).requires_grad_(True)
    torch.nn.functional.cross_entropy(module(x), torch.from_numpy(labels)).backward()
    plan = autoattack_plan(target, seed)
    tiny = plan._replace(settings=dataclasses.replace(plan.settings, pgd_steps=2, square_queries=4))
    evaluate_preset(target, images, labels, tiny, eps=eps, batch_size=batch_size)


# ---------------------------------------------------------------------------
# The machine and the record (chunk figures: `reference_comparison`).


def cpu_description():
    """CPU model and the bfloat16/AMX flags, from lscpu (else /proc/cpuinfo)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cpu_flags = set(fields.get("Flags", "").split())
    return {
        "model_name": fields.get("Model name") or provenance.machine_description(),
        "cpus": os.cpu_count(),
        **{flag: flag in cpu_flags for flag in ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")},
    }


def environment(threads):
    return {
        "machine": provenance.machine_description(),
        "cpu": cpu_description(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": {
            "tensorflow_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "tensorflow_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "asked": threads,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },
        "reference": {
            "repository": "fra31/auto-attack",
            "commit": _REFERENCE_COMMIT.value,
            "installed_at": os.path.dirname(autoattack.__file__),
        },
    }


def record(reference, ours, *, done, num_examples, port_check, plan, eps, commit):
    """The JSON payload of the chunks done so far."""
    ref, own = summary(reference), summary(ours)
    return {
        "command": " ".join(["python", "benchmarks/reference_autoattack.py", *sys.argv[1:]]),
        "commit": commit,  # read at the start: the checkout may move on during a long run
        "model": _MODEL.value,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "complete": done == num_examples,
        "split": _SPLIT.value,
        "num_examples": num_examples,
        "examples_done": done,
        "eps": eps,
        "seed": _SEED.value,
        "chunk_size": _CHUNK_SIZE.value,
        "batch_size": _BATCH_SIZE.value,
        "port_check": port_check,
        "reference_attacks": list(REFERENCE_ATTACKS),
        "our_attacks": list(plan.attacks),
        "our_settings": dataclasses.asdict(plan.settings),
        "reference": ref,
        "ours": own,
        **speed_ratios(ref, own),
        "agreement": agreement(reference, ours),
        "load_average": os.getloadavg(),
    }


def set_threads(threads):
    """The same thread counts for both frameworks (before either computes)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def compare(target, module, images, labels, plan, *, eps, seed, batch_size, chunk_size, write):
    """Alternates reference and preset chunks; returns the last
    `write(reference totals, our totals, examples done)`, called after each."""
    totals = {"reference": {}, "ours": {}}
    payload = None
    for index, start in enumerate(range(0, len(labels), chunk_size)):
        x, y = images[start : start + chunk_size], labels[start : start + chunk_size]
        for name in ("reference", "ours") if index % 2 == 0 else ("ours", "reference"):
            if name == "reference":
                chunk = run_reference(module, x, y, eps=eps, seed=seed, batch_size=batch_size)
            else:
                chunk = run_ours(target, x, y, plan, eps=eps, batch_size=batch_size)
            merge(totals[name], chunk, start)
            print(
                f"examples {start}-{start + len(y) - 1} {name}: {chunk['seconds']:.1f} s, "
                f"robust {int(np.sum(chunk['robust']))}/{len(y)}",
                flush=True,
            )
        payload = write(totals["reference"], totals["ours"], start + len(y))
    return payload


def check_flags():
    """Fails with a `app.UsageError` naming the first bad flag value."""
    if _NUM_EXAMPLES.value < 0:
        raise app.UsageError(
            f"--num_examples must be 0 (all) or positive. Received: {_NUM_EXAMPLES.value}"
        )
    for flag in (_CHUNK_SIZE, _BATCH_SIZE, _THREADS):
        if flag.value <= 0:
            raise app.UsageError(
                f"--{flag.name} must be a positive integer. Received: {flag.value}"
            )
    if not 0.0 < _EPS.value <= 1.0:
        raise app.UsageError(f"--eps must be in (0, 1] (pixel units). Received: {_EPS.value}")
    if not os.path.exists(_MODEL.value):
        raise app.UsageError(f"--model path {_MODEL.value!r} does not exist.")


def prepare(*, eps, seed, batch_size):
    """Loads the model and examples, ports and checks the model, warms up.

    Returns:
        `(target, torch module, images, labels, port check figures)`.
    """
    target = evaluation.load_target(_MODEL.value, policy="float32")
    dataset = target.config.get("dataset") or "mnist"
    images, labels = evaluation.load_examples(
        dataset, _SPLIT.value, num_examples=_NUM_EXAMPLES.value or None, data_dir=_DATA_DIR.value
    )
    module = port_model(target.keras_model)
    options = {"eps": eps, "seed": seed, "batch_size": batch_size}
    port_check = check_port(module, target.model_fn, images, tolerance=_TOLERANCE.value, **options)
    print(f"port check: {port_check}", flush=True)
    warm_up(module, target, images[:WARM_UP], labels[:WARM_UP], **options)
    return target, module, images, labels, port_check


def default_output(split, num_examples):
    """`results/autoattack/reference_comparison[_<split slice>]_<N or all>.json`."""
    name = "reference_comparison"
    if split != "test":
        name += "_" + "_".join(filter(None, re.split(r"[^0-9A-Za-z]+", split)))
    return os.path.join("results", "autoattack", f"{name}_{num_examples or 'all'}.json")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    check_flags()
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    set_threads(_THREADS.value)
    output = _OUTPUT.value or default_output(_SPLIT.value, _NUM_EXAMPLES.value)
    options = {"eps": _EPS.value, "seed": _SEED.value, "batch_size": _BATCH_SIZE.value}
    target, module, images, labels, port_check = prepare(**options)
    plan = autoattack_plan(target, _SEED.value)
    env = environment(_THREADS.value)
    commit = provenance.git_commit()

    def write(reference, ours, done):
        payload = record(
            reference,
            ours,
            done=done,
            num_examples=len(labels),
            port_check=port_check,
            plan=plan,
            eps=_EPS.value,
            commit=commit,
        )
        jsonio.write_json(output, {**payload, "environment": env})
        return payload

    payload = compare(
        target, module, images, labels, plan, chunk_size=_CHUNK_SIZE.value, write=write, **options
    )
    print(format_figures(payload))
    print(f"Written: {output}")


def format_figures(payload):
    """A Markdown table of both implementations' figures."""
    ref, own = payload["reference"], payload["ours"]
    lines = [
        f"eps={payload['eps']:g}, {payload['examples_done']} examples of "
        f"{payload['split']}, clean "
        f"{ref['clean_accuracy']:.1f}% (reference) / {own['clean_accuracy']:.1f}% (ours)",
        "",
        "| attack | reference robust after | reference s | ours robust after | ours s |",
        "|---|---|---|---|---|",
    ]
    for (name, r), (our_name, o) in zip(ref["attacks"].items(), own["attacks"].items()):
        lines.append(
            f"| {name} / {our_name} | {r['robust_accuracy_after']:.1f}% | {r['seconds']:.1f} "
            f"| {o['robust_accuracy_after']:.1f}% | {o['seconds']:.1f} |"
        )
    agree = payload["agreement"]
    lines += [
        "",
        f"wall: reference {ref['seconds']:.1f} s, ours {own['seconds']:.1f} s, ratio "
        f"{payload['speed_ratio_reference_over_ours']:.2f}x",
        f"worst case: reference {ref['worst_case_accuracy']:.2f}%, ours "
        f"{own['worst_case_accuracy']:.2f}%, both {agree['worst_case_of_both']:.2f}% "
        f"(robust under the reference only: {agree['robust_under_reference_only']}; "
        f"under ours only: {agree['robust_under_ours_only']})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
