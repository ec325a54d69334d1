r"""Where a train step's time goes: per-op time of methods' steps, side by side.

Builds each method's real train step as `benchmarks/train_throughput.py` does
(`sq_keras.throughput.build_train_steps`: same model, optimiser, batch and
policy), runs --steps steps of each under TensorFlow's profiler, in turns for
--repeats rounds, and sums every op's execution time on the executor's threads
(an op's time includes the intra-op threads it waits for; ops that run at once
on the two inter-op threads both count). Op names are made comparable across
methods (a model built second is `madry_mnist_1`, its optimiser `adam_1`) and
grouped: the optimiser's update, the model's forward pass, its backward pass
(with `fast_backward`'s hand-written input gradient), a free step's memory
(gather and scatter, `free_memory_*`), and the step's other ops (the signed
step and projection, `free_signed_step`; the loss). The table lists, per op, milliseconds
per step for each method and the difference from the first, and the JSON
keeps every op.

Op times under the profiler are not step times: the profiler adds its own
cost, and on a shared machine an op's time also counts waits for a core. Use
`benchmarks/train_throughput.py` for the cost ratio and this for its parts.

Usage:
  python benchmarks/step_profile.py --methods=natural,sq_noisy,sq_free \
      --output=results/mnist_step_profile.json
"""

import collections
import glob
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras import throughput  # noqa: E402
from sq_keras import training  # noqa: E402

_DATASET = flags.DEFINE_enum("dataset", "mnist", sorted(data.DATASETS), "Dataset shape/model.")
_METHODS = flags.DEFINE_list(
    "methods", "natural,sq_free", "Methods to profile; the first is the baseline."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per step.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 20, "Profiled steps per method and round.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds; each op's median is kept.", lower_bound=1)
_TOP = flags.DEFINE_integer("top", 30, "Ops shown in the printed table.", lower_bound=1)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", list(precision.POLICIES), "Dtype policy."
)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")

GROUPS = ("optimizer", "forward", "backward", "memory", "step")


def op_key(name):
    """`(group, name)` of a profiled op, the same for every instance of a model."""
    name = re.sub(
        r"(?<=[a-z0-9])_\d+(?=/|:|$)", "", name
    )  # madry_mnist_1/conv1_1 -> madry_mnist/conv1
    scope = name.split("/")[0]
    if scope.startswith(("adam", "sgd", "optimizer")) or "Assign" in name:
        return "optimizer", name
    if scope == "gradient_tape" or "_fast_backward" in name:
        return "backward", name
    if scope.startswith("free_memory"):
        return "memory", name
    if scope.startswith("madry") or scope.startswith(("resnet", "wide_resnet", "model")):
        return "forward", name
    return "step", name


def op_milliseconds(logdir, steps):
    """Dict `(group, op name)` -> milliseconds per step, from a profiler run's trace."""
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's threads
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name and not name.startswith("Executor"):
                    totals[op_key(name)] += event.duration_ps / 1e9 / steps
    return totals


def profile(runs, *, steps, repeats, log):
    """Per method and op, the median over rounds of milliseconds per step."""
    rounds = {name: [] for name in runs}
    root = tempfile.mkdtemp(prefix="step_profile_")
    try:
        for repeat in range(repeats):
            for name, (step, batch) in runs.items():
                float(step(*batch(steps))[0])  # untimed: refills the caches
                logdir = os.path.join(root, f"{name}_{repeat}")
                tf.profiler.experimental.start(logdir)
                for i in range(steps):
                    out = step(*batch(i))
                float(out[0])
                tf.profiler.experimental.stop()
                rounds[name].append(op_milliseconds(logdir, steps))
            log(f"  profiling round {repeat + 1}/{repeats} done")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {name: _medians(per_round) for name, per_round in rounds.items()}


def _medians(per_round):
    keys = set().union(*per_round)
    return {key: statistics.median(r.get(key, 0.0) for r in per_round) for key in keys}


def table(ops, methods, top):
    """Markdown: group totals, then the `top` ops by largest time in any method."""
    base = methods[0]
    head = "| | " + " | ".join(methods) + f" | {methods[-1]} - {base} |"
    lines = [head, "|---" * (len(methods) + 2) + "|"]
    for group in (*GROUPS, None):
        values = [sum(ms for (g, _), ms in ops[m].items() if group in (None, g)) for m in methods]
        label = f"**{group or 'all ops'}** (ms/step)"
        lines.append(_row(label, values))
    keys = set().union(*(ops[m] for m in methods))
    ranked = sorted(keys, key=lambda k: -max(ops[m].get(k, 0.0) for m in methods))
    for group, name in ranked[:top]:
        lines.append(_row(f"{group}: `{name}`", [ops[m].get((group, name), 0.0) for m in methods]))
    return "\n".join(lines)


def _row(label, values):
    cells = " | ".join(f"{v:.2f}" for v in values)
    return f"| {label} | {cells} | {values[-1] - values[0]:+.2f} |"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    unknown = [m for m in _METHODS.value if m not in training.METHODS]
    if unknown:
        raise app.UsageError(f"Unknown methods {unknown}. Valid: {sorted(training.METHODS)}")
    policy = precision.set_policy(_MIXED_PRECISION.value)
    configs = {
        m: training.TrainConfig(dataset=_DATASET.value, method=m, mixed_precision=policy)
        for m in _METHODS.value
    }
    log = lambda line: print(line, flush=True)  # noqa: E731
    runs = throughput.build_train_steps(configs, batch_size=_BATCH_SIZE.value, log=log)
    ops = profile(runs, steps=_STEPS.value, repeats=_REPEATS.value, log=log)
    methods = list(runs)
    markdown = table(ops, methods, _TOP.value)
    print(markdown)
    if _OUTPUT.value:
        payload = {
            "command": " ".join(["python", "benchmarks/step_profile.py", *sys.argv[1:]]),
            "policy": policy,
            "batch_size": _BATCH_SIZE.value,
            "steps": _STEPS.value,
            "repeats": _REPEATS.value,
            "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "environment": provenance.environment(),
            "machine": provenance.machine_description(),
            "table": markdown,
            "ops_ms_per_step": {
                m: {f"{g}: {n}": round(ms, 4) for (g, n), ms in sorted(ops[m].items())}
                for m in methods
            },
        }
        jsonio.write_json(_OUTPUT.value, payload)
        print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
