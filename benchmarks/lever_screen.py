r"""Screens levers of MNIST's default recipe on held-out training images.

Each candidate is MNIST's default recipe (`sq_free`, Madry CNN, 10 epochs,
1.25 eps per visit, learning rate x0.1 for the second half) with a few
`TrainConfig` settings changed. For each candidate in `--candidates` the
script trains with `python -m apps.train` on the first `--train_examples`
training images, then attacks the trained model with `python -m apps.evaluate`
on `--holdout` training images that no candidate trained on (default: the
recipe selection's BPDA APGD-CE + APGD-DLR on `train[50000:52000]`). Nothing
is attacked on the test set: the screen selects, the test set only reports on
the winner. `--time_steps` times every candidate's train step round-robin in
one process against the `natural` step of the same architecture
(`sq_keras.throughput`), so a lever's cost is a ratio that other load on the
machine does not bias. `--early_stop` measures early stopping on a held-out
robust probe for a candidate that kept its epochs' weights (`epochs60`): the
epoch whose weights score best on `--probe` (training images neither the
training nor `--holdout` uses) is the one attacked on `--holdout`.

Results are merged into `--output` by candidate, so runs of some candidates
at a time (or on other machines) build one table (`--merge_from` merges
their outputs, `--markdown` writes the table); a rerun resumes both the
training runs and the evaluations.

Usage:
  SQ_KERAS_DATA_DIR=../shared/data python benchmarks/lever_screen.py \
      --candidates=default,epochs20 --output=results/mnist_lever_screen.json
  python benchmarks/lever_screen.py --candidates=default,epochs20 --time_steps \
      --output=results/mnist_lever_screen.json
  python benchmarks/lever_screen.py --candidates=epochs60 --notrain --early_stop \
      --output=results/mnist_lever_screen.json
"""

import os
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras import throughput  # noqa: E402
from sq_keras import training  # noqa: E402
from sq_keras.reproduce import attacking  # noqa: E402

# name -> (what it changes, TrainConfig settings over MNIST's default recipe).
CANDIDATES = {
    "default": ("MNIST's default recipe, 10 epochs", {}),
    "epochs20": ("20 epochs, the schedule scaled (drop at half)", {"epochs": 20}),
    "epochs30": ("30 epochs, the schedule scaled (drop at half)", {"epochs": 30}),
    "epochs60": (
        "60 epochs, the schedule scaled (drop at half), the weights of every epoch kept",
        {"epochs": 60, "keep_epoch_weights": True},
    ),
    "alpha_linear": (
        "quantizer steepness 10 -> 100 linearly over the epochs (default: geometrically)",
        {"alpha_schedule": "linear"},
    ),
    "alpha_constant": (
        "quantizer steepness 100 (the exported value) from the first epoch",
        {"alpha_schedule": "constant"},
    ),
    "step_decay": (
        "the per-visit step linear from 1.25 eps to 0.25 eps over the run's updates",
        {"free_step_end": 0.075},
    ),
    "k3_margin": (
        "the quantizer with K = 3 thresholds kept in [0.35, 0.65] (default: K = 1 in [0, 1])",
        {"num_thresholds": 3, "threshold_margin": 0.35},
    ),
    "ema": ("an EMA of the weights (decay 0.999) evaluated and exported", {"ema_decay": 0.999}),
    "ema_epochs20": (
        "20 epochs with an EMA of the weights (decay 0.999)",
        {"epochs": 20, "ema_decay": 0.999},
    ),
    "ema_epochs30": (
        "30 epochs with an EMA of the weights (decay 0.999)",
        {"epochs": 30, "ema_decay": 0.999},
    ),
    "width2": (
        "the Madry CNN at twice the width (64, 128 filters, 2048 units)",
        {"model": "madry_mnist_x2"},
    ),
    "width4": (
        "the Madry CNN at four times the width (128, 256 filters, 4096 units)",
        {"model": "madry_mnist_x4"},
    ),
    "resnet_small": (
        "a small pre-activation ResNet (32-filter stem, one block at 32, 64, 128 filters)",
        {"model": "preact_resnet_mnist"},
    ),
    "silu": ("the Madry CNN with SiLU for ReLU", {"model": "madry_mnist_silu"}),
    "trades": (
        "the TRADES objective on the free perturbation (beta 6), clean and perturbed "
        "batches as one",
        {"free_loss": "trades"},
    ),
    "trades_beta3": (
        "the TRADES objective on the free perturbation at beta 3 (half the KL weight)",
        {"free_loss": "trades", "trades_beta": 3.0},
    ),
    "width2_trades_beta3": (
        "the two gains together: the Madry CNN at twice the width, TRADES at beta 3",
        {"model": "madry_mnist_x2", "free_loss": "trades", "trades_beta": 3.0},
    ),
    "eps035": (
        "trained at eps 0.35 (a margin over the attacked 0.3), step 1.25 eps per visit",
        {"eps": 0.35},
    ),
}

_CANDIDATES = flags.DEFINE_list("candidates", ["default"], f"Of: {', '.join(CANDIDATES)}.")
_SEED = flags.DEFINE_integer("seed", 0, "Training seed.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 50_000, "First N training images.")
_HOLDOUT = flags.DEFINE_string(
    "holdout",
    "train[50000:52000]",
    "Images attacked: training images no candidate trains on (2,000: one standard "
    "error of ~0.6 points at 92%, against ~1.2 on the recipe selection's 500).",
)
_ATTACKS = flags.DEFINE_string(
    "attacks", "bpda_identity:apgd_ce,bpda_identity:apgd_dlr", "apps.evaluate --attacks."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/lever_screen", "Runs and reports go here.")
_OUTPUT = flags.DEFINE_string("output", None, "Merge the results into this JSON file.")
_TRAIN = flags.DEFINE_boolean("train", True, "Train and attack the candidates.")
_TIME_STEPS = flags.DEFINE_boolean("time_steps", False, "Time the steps round-robin.")
_MERGE_FROM = flags.DEFINE_list(
    "merge_from", [], "Outputs of earlier screens to merge into --output first."
)
_MARKDOWN = flags.DEFINE_string(
    "markdown", None, "Write --output as a Markdown table here, and do nothing else."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Round-robin repeats of --time_steps.")
_EARLY_STOP = flags.DEFINE_boolean(
    "early_stop",
    False,
    "Early stopping on a robust probe, for each candidate trained with its epochs' weights "
    "kept: attack them on --probe, take the best epoch's weights, attack those on "
    "--holdout and record the row <candidate>_early_stop.",
)
_PROBE = flags.DEFINE_string(
    "probe",
    "train[52000:52500]",
    "--early_stop's probe: training images that neither training nor --holdout uses.",
)
_PROBE_EVERY = flags.DEFINE_integer(
    "probe_every", 5, "--early_stop probes every this many epochs' weights, and the last."
)


def _settings(name):
    return {"dataset": "mnist", "method": "sq_free", "seed": _SEED.value, **CANDIDATES[name][1]}


def _run(command, log_path):
    start = time.perf_counter()
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [sys.executable, "-m", *command], cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed; see {log_path}")
    return time.perf_counter() - start


def _slug(split):
    """`train[50000:52000]` -> `train_50000_52000`: a file name per held-out set."""
    return "_".join(part for part in re.split(r"[^0-9A-Za-z]+", split) if part)


def train_and_attack(name):
    """Trains one candidate and attacks it on the held-out images; returns its row."""
    out_dir = os.path.abspath(os.path.join(_WORKDIR.value, name))
    os.makedirs(out_dir, exist_ok=True)
    settings = _settings(name)
    train_flags = [f"--{key}={value}" for key, value in settings.items()]
    seconds = _run(
        [
            "apps.train",
            *train_flags,
            f"--train_examples={_TRAIN_EXAMPLES.value}",
            f"--model_dir={out_dir}/run",
            f"--export_dir={out_dir}/export",
        ],
        os.path.join(out_dir, "train.log"),
    )
    report_path = os.path.join(out_dir, f"holdout_{_slug(_HOLDOUT.value)}.json")
    _run(
        [
            "apps.evaluate",
            f"--model={out_dir}/run",
            f"--split={_HOLDOUT.value}",
            "--num_examples=0",
            f"--attacks={_ATTACKS.value}",
            f"--output={report_path}",
            "--noprogress",
        ],
        os.path.join(out_dir, "evaluate.log"),
    )
    report = jsonio.read_json(report_path)
    results = jsonio.read_json(os.path.join(out_dir, "run", "results.json"))
    return {
        "note": CANDIDATES[name][0],
        "holdout": _HOLDOUT.value,
        "settings": settings,
        "clean": report["clean_accuracy"],
        "holdout_worst_case": report["worst_case_accuracy"],
        "last_call_seconds": seconds,
        "epochs_done": results["epochs_done"],
        "total_train_seconds": results["total_train_seconds"],
        "thresholds": results["thresholds"],
        "trained_at": jsonio.read_json(os.path.join(out_dir, "run", "config.json"))["environment"][
            "git_commit"
        ],
        "commit": provenance.environment()["git_commit"],
        "machine": provenance.environment()["machine"],
    }


def _range(split):
    """`train[a:b]` -> `range(a, b)`; None for any other form of split."""
    try:
        base, start, stop = data.split_slice(split)
    except ValueError:
        return None
    if base != "train" or start is None or stop is None or start < 0 or stop < 0:
        return None
    return range(start, stop)


def _check_probe():
    """The probe must be held out: from training and from the images it is judged on."""
    probe, holdout = _range(_PROBE.value), _range(_HOLDOUT.value)
    if probe is None or holdout is None:
        raise app.UsageError("--early_stop needs --probe and --holdout as train[a:b].")
    overlaps = [
        name
        for name, other in (
            ("--holdout", holdout),
            ("the training images", range(_TRAIN_EXAMPLES.value)),
        )
        if probe.start < other.stop and other.start < probe.stop
    ]
    if overlaps:
        raise app.UsageError(f"--probe={_PROBE.value} overlaps {' and '.join(overlaps)}.")


def early_stop(name, log):
    """Row `<name>_early_stop`: the best-probing epoch's weights on the held-out images.

    The epochs' scores on `--probe` and the chosen epoch's on `--holdout` use
    the screen's attacks and `apps.evaluate`'s default settings, cached in the
    run's `evaluation/` folder. Ties go to the earlier epoch.
    """
    run_dir = os.path.abspath(os.path.join(_WORKDIR.value, name, "run"))
    history = jsonio.read_json(os.path.join(run_dir, "history.json"))
    last = history[-1]["epoch"]
    probed = [r for r in history if r["epoch"] % _PROBE_EVERY.value == 0 or r["epoch"] == last]
    score = dict(
        dataset="mnist",
        eps=data.get_info("mnist").eps,
        settings=evaluation.AttackSettings(),
        eval_policy="float32",
        log=log,
    )
    curve = attacking.robustness_curve(
        run_dir,
        probed,
        attacking.load_split("mnist", _PROBE.value),
        filename=f"probe_{_slug(_PROBE.value)}_every_{_PROBE_EVERY.value}.json",
        **score,
    )
    best = max(curve["points"], key=lambda p: (p["robust_accuracy"], -p["epoch"]))
    chosen = [r for r in history if r["epoch"] == best["epoch"]]
    judged = attacking.robustness_curve(
        run_dir,
        chosen,
        attacking.load_split("mnist", _HOLDOUT.value),
        filename=f"holdout_{_slug(_HOLDOUT.value)}_epoch_{best['epoch']}.json",
        **score,
    )["points"][0]
    return {
        "note": f"{CANDIDATES[name][0]}; early stopping: the weights of the epoch that "
        f"scored best on {_PROBE.value} (every {_PROBE_EVERY.value} epochs probed), "
        f"epoch {best['epoch']}",
        "holdout": _HOLDOUT.value,
        "probe": _PROBE.value,
        "probe_curve": curve["points"],
        "settings": _settings(name),
        "clean": judged["clean_accuracy"],
        "holdout_worst_case": judged["robust_accuracy"],
        "epochs_done": best["epoch"],
        "total_train_seconds": sum(r["seconds"] for r in history[: best["epoch"]]),
        "trained_at": jsonio.read_json(os.path.join(run_dir, "config.json"))["environment"][
            "git_commit"
        ],
        "commit": provenance.environment()["git_commit"],
        "machine": provenance.environment()["machine"],
    }


def time_steps(names, log):
    """Each candidate's step cost against the natural step of its architecture.

    Also the cost of its whole run in epochs of natural training of the Madry
    CNN (the default's architecture): epochs x its step / that natural step.
    """
    configs = {"natural@madry_mnist": _natural("madry_mnist")}
    for name in names:
        config = training.TrainConfig(**_settings(name)).resolved()
        configs[name] = config
        configs.setdefault(f"natural@{config.model}", _natural(config.model))
    costs = throughput.time_train_steps(configs, repeats=_REPEATS.value, log=log)
    baseline = costs["natural@madry_mnist"]
    rows = {}
    for name in names:
        own, natural = costs[name], costs[f"natural@{configs[name].model}"]
        rows[name] = {
            "seconds_per_step": own["seconds_per_step"],
            "natural_seconds_per_step": natural["seconds_per_step"],
            "cost_vs_natural": own["seconds_per_step"] / natural["seconds_per_step"],
            "cpu_cost_vs_natural": own["cpu_seconds_per_step"] / natural["cpu_seconds_per_step"],
            "run_cost_in_natural_madry_epochs": configs[name].epochs
            * own["cpu_seconds_per_step"]
            / baseline["cpu_seconds_per_step"],
            "commit": provenance.environment()["git_commit"],
            "machine": provenance.environment()["machine"],
        }
    return rows


def _natural(model):
    return training.TrainConfig(
        dataset="mnist", method="natural", model=model, seed=_SEED.value
    ).resolved()


def _merge(rows, key):
    """Puts `{candidate: row}` under `key` ("screen", "step_cost") into `--output`."""
    if not _OUTPUT.value:
        return
    existing = jsonio.read_json(_OUTPUT.value) if os.path.exists(_OUTPUT.value) else {}
    candidates = existing.get("candidates", {})
    for name, row in rows.items():
        candidates.setdefault(name, {})[key] = row
    _write(candidates)


def _write(candidates):
    jsonio.write_json(
        _OUTPUT.value,
        {
            "holdout": _HOLDOUT.value,
            "attacks": _ATTACKS.value,
            "train_examples": _TRAIN_EXAMPLES.value,
            "seed": _SEED.value,
            "candidates": candidates,
            "last_command": " ".join(sys.argv),
            "environment": provenance.environment(),
        },
    )


def merge_files(paths):
    """The candidates of several outputs of this script, later files first per row kind."""
    candidates = {}
    for path in paths:
        for name, rows in jsonio.read_json(path)["candidates"].items():
            candidates.setdefault(name, {}).update(rows)
    return candidates


def markdown(candidates):
    """The screen as a Markdown table, best held-out worst case first."""
    lines = [
        "| candidate | what changes | clean | held-out worst case | step cost vs natural "
        "(wall / CPU) | run cost (natural Madry CNN epochs, CPU) | epochs | training s (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def worst(item):
        return item[1].get("screen", {}).get("holdout_worst_case", -1)

    for name, rows in sorted(candidates.items(), key=worst, reverse=True):
        screen, cost = rows.get("screen"), rows.get("step_cost")
        note = (screen or {}).get("note") or CANDIDATES.get(name, ("",))[0]
        cells = ["-", "-", "-", "-"]
        if screen:
            cells = [
                f"{screen['clean']:.2f}",
                f"{screen['holdout_worst_case']:.2f}",
                str(screen["epochs_done"]),
                f"{screen['total_train_seconds']:.0f}",
            ]
        cost_cell = run_cell = "-"
        if cost:
            cost_cell = f"{cost['cost_vs_natural']:.2f}x / {cost['cpu_cost_vs_natural']:.2f}x"
            if "run_cost_in_natural_madry_epochs" in cost:
                run_cell = f"{cost['run_cost_in_natural_madry_epochs']:.1f}"
        row = [f"`{name}`", note, cells[0], cells[1], cost_cell, run_cell, cells[2], cells[3]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    unknown = [name for name in _CANDIDATES.value if name not in CANDIDATES]
    if unknown:
        raise app.UsageError(f"Unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    if _MERGE_FROM.value:
        _write(merge_files(_MERGE_FROM.value))
    if _MARKDOWN.value:
        with open(_MARKDOWN.value, "w") as f:
            f.write(markdown(jsonio.read_json(_OUTPUT.value)["candidates"]))
        return
    policy = precision.set_policy("auto")
    if _TRAIN.value:
        for name in _CANDIDATES.value:
            row = {**train_and_attack(name), "policy": policy}
            print(
                f"{name}: clean {row['clean']:.1f}%, held-out worst case "
                f"{row['holdout_worst_case']:.1f}%",
                flush=True,
            )
            _merge({name: row}, "screen")
    if _EARLY_STOP.value:
        _check_probe()
        for name in _CANDIDATES.value:
            row = early_stop(name, log=lambda line: print(line, flush=True))
            print(
                f"{name}_early_stop: epoch {row['epochs_done']}, clean {row['clean']:.1f}%, "
                f"held-out worst case {row['holdout_worst_case']:.1f}%",
                flush=True,
            )
            _merge({f"{name}_early_stop": {**row, "policy": policy}}, "screen")
    if _TIME_STEPS.value:
        costs = time_steps(_CANDIDATES.value, log=lambda line: print(line, flush=True))
        for name, cost in costs.items():
            print(f"{name}: {cost['cost_vs_natural']:.3f}x natural", flush=True)
        _merge({name: {**cost, "policy": policy} for name, cost in costs.items()}, "step_cost")


if __name__ == "__main__":
    app.run(main)
