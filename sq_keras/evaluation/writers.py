"""Output of a `Report`: the JSON file, a text table, figures and TensorBoard.

```python
written = writers.write_report(report, "runs/x/evaluation.json", logdir="runs/x/tb")
written["files"]   # {"json", "sweep_plot", "examples_plot", "logdir"}
print(writers.format_table(report))
```
"""

import os

import numpy as np
import tensorflow as tf

from sq_keras import jsonio
from sq_keras.evaluation.report import eps_key

_STATUS = {True: "passed", False: "FAILED", None: "n/a"}


def _table_row(report, name, width):
    row = name.ljust(width)
    for eps in report.eps_values:
        value = report.robust_accuracy(name, eps)
        row += (f"{value:.2f}" if value is not None else "-").rjust(10)
    result = report.attacks[name]["results"].get(eps_key(report.eps), {})
    speed = result.get("images_per_second")
    return row + (f"{speed:.1f}" if speed else "-").rjust(10)


def format_table(report):
    """A plain-text table: robust accuracy per attack and eps, then the checks."""
    names = list(report.attacks)
    first = "robust after" if report.worst_case_only else "attack"
    width = max([len(n) for n in names] + [len("worst case"), len(first)]) + 2
    header = (
        first.ljust(width)
        + "".join(f"eps={e:g}".rjust(10) for e in report.eps_values)
        + "  img/s".rjust(10)
    )
    lines = [
        f"model: {report.model}  examples: {report.num_examples}  "
        f"clean accuracy: {report.clean_accuracy:.2f}%",
        *(
            [
                "cascade (worst case only): each attack ran on the examples every earlier one "
                "failed on; a row is the accuracy robust after it"
            ]
            if report.worst_case_only
            else []
        ),
        header,
        "-" * len(header),
    ]
    lines += [_table_row(report, name, width) for name in names]
    worst = "".join(f"{report.worst_case_at(eps):.2f}".rjust(10) for eps in report.eps_values)
    lines += ["-" * len(header), "worst case".ljust(width) + worst]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines.append("masking checks:")
    for name, check in report.checks.items():
        lines.append(f"  [{_STATUS[check['passed']]:>6}] {name}: {check['message']}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_sweep(report, path):
    """Robust accuracy vs eps per attack, worst case and chance, as a PNG."""
    plt = _pyplot()
    eps_values = report.eps_values
    figure, axes = plt.subplots(figsize=(6, 4))
    for name in report.attacks:
        points = [(e, report.robust_accuracy(name, e)) for e in eps_values]
        points = [(e, a) for e, a in points if a is not None]
        axes.plot(*zip(*points), marker="o", label=name, alpha=0.8)
    axes.plot(
        eps_values,
        [report.worst_case_at(e) for e in eps_values],
        color="black",
        linewidth=2.5,
        marker="s",
        label="worst case",
    )
    axes.axhline(100.0 / report.num_classes, color="grey", linestyle="--", label="chance")
    axes.set_xlabel("eps (l-inf, pixel units in [0, 1])")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(-2, 102)
    cascade = ", cascade: robust after each attack" if report.worst_case_only else ""
    axes.set_title(f"clean {report.clean_accuracy:.1f}%{cascade}")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    _save(plt, figure, path)


def _most_damaging(shown, i):
    """`(attack, image, prediction)` shown for example `i`: the first attack
    that fools it, else the last one run, else the clean image."""
    chosen, image, prediction = None, shown["images"][i], shown["predictions"][i]
    for name, (adversarial, predictions) in shown["adversarial"].items():
        chosen, image, prediction = name, adversarial[i], predictions[i]
        if predictions[i] != shown["labels"][i]:
            break
    return chosen, image, prediction


def _show(axis, image, title, color):
    axis.imshow(np.squeeze(image), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
    axis.set_title(title, fontsize=7, color=color)
    axis.axis("off")


def plot_examples(report, path, class_names=None):
    """Clean images (top) and their most damaging adversarial version (bottom)."""
    plt = _pyplot()
    shown = report.examples
    images, labels, clean = shown["images"], shown["labels"], shown["predictions"]
    names = class_names or [str(i) for i in range(report.num_classes)]
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    for i in range(count):
        chosen, adv_image, adv_prediction = _most_damaging(shown, i)
        _show(axes[0, i], images[i], f"y={names[labels[i]]} p={names[clean[i]]}", "black")
        fooled = adv_prediction != labels[i]
        title = f"{chosen or '-'}\np={names[adv_prediction]}"
        _show(axes[1, i], adv_image, title, "red" if fooled else "black")
    figure.suptitle(f"clean (top) vs adversarial at eps={report.eps:g} (bottom)", fontsize=8)
    _save(plt, figure, path)


def write_tensorboard(report, logdir, examples_png=None):
    """Scalars per attack (step = eps in thousandths), the table and the figure."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.scalar("clean_accuracy", report.clean_accuracy, step=0)
        for eps in report.eps_values:
            step = int(round(1000 * eps))
            for name in report.attacks:
                value = report.robust_accuracy(name, eps)
                if value is not None:
                    tf.summary.scalar(f"robust_accuracy/{name}", value, step=step)
            tf.summary.scalar("worst_case_accuracy", report.worst_case_at(eps), step=step)
        tf.summary.text("report", "```\n" + format_table(report) + "\n```", step=0)
        if examples_png and os.path.isfile(examples_png):
            image = tf.image.decode_png(tf.io.read_file(examples_png), channels=3)
            tf.summary.image("examples", image[None], step=0)
    writer.flush()
    writer.close()


def write_report(report, output, *, class_names=None, logdir=None):
    """Writes the JSON report and, beside it, the two PNG figures.

    Files: `output` (JSON, written atomically), `<stem>_sweep.png` (robust
    accuracy vs eps) and `<stem>_examples.png` (clean vs adversarial with
    predictions; only when the report holds its `examples`, which a report
    read back from JSON or merged from shards does not), plus TensorBoard
    summaries in `logdir` when given.

    Args:
        report: A `Report` from `evaluate`.
        output: Path of the JSON file.
        class_names: Names of the classes in the examples figure.
        logdir: Optional TensorBoard directory.

    Returns:
        The JSON as written: `report.to_json()` with "files" added.
    """
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    stem = os.path.splitext(os.path.abspath(output))[0]
    files = {"json": os.path.abspath(output), "sweep_plot": f"{stem}_sweep.png"}
    plot_sweep(report, files["sweep_plot"])
    if report.examples is not None:
        files["examples_plot"] = f"{stem}_examples.png"
        plot_examples(report, files["examples_plot"], class_names=class_names)
    if logdir:
        write_tensorboard(report, logdir, files.get("examples_plot"))
        files["logdir"] = os.path.abspath(logdir)
    written = {**report.to_json(), "files": files}
    jsonio.write_json(output, written)
    return written
