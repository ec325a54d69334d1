"""The comparison's figures, as PNG files beside the table.

`<dataset>_cost_vs_robustness.png` (training cost per epoch against
worst-case robustness, when the speed-ups are known),
`<dataset>_robustness_vs_eps.png` (worst-case robust accuracy against eps of
every tested variant) and `<dataset>_grad_l1.png` (the input-gradient norm
over training).
"""

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _figure(path, xlabel, ylabel, curves, *, log_y=False, log_x=False):
    """Writes one figure of `(label, xs, ys, marker)` curves to `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, xs, ys, marker in curves:
        ax.plot(xs, ys, marker=marker, label=label, linestyle="-" if len(xs) > 1 else "")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _tradeoff_curves(rows):
    costed = [r for r in rows if r.get("speedup_per_epoch_vs_pgd_at") and r["tested"]]
    return [
        (r["name"], [1.0 / r["speedup_per_epoch_vs_pgd_at"]], [r["worst_case_accuracy"]], "o")
        for r in costed
    ]


def _sweep_curves(rows):
    curves = []
    for r in rows:
        if not r["tested"]:
            continue
        by_eps = sorted((float(e), a) for e, a in r["worst_case_accuracy_by_eps"].items())
        curves.append((r["name"], [e for e, _ in by_eps], [a for _, a in by_eps], "o"))
    return curves


def _grad_curves(rows):
    return [(r["name"], np.arange(1, len(r["grad_l1"]) + 1), r["grad_l1"], ".") for r in rows]


def write_figures(rows, output_dir, dataset):
    """Writes the figures of `rows` into `output_dir` (which must exist).

    Returns:
        `{"tradeoff": path, "sweep": path, "grad_l1": path}`; no `tradeoff`
        when no tested row has a speed-up, no `sweep` when no row was tested.
    """

    def path(name):
        return os.path.join(output_dir, f"{dataset}_{name}.png")

    files = {}
    tradeoff = _tradeoff_curves(rows)
    if tradeoff:
        files["tradeoff"] = _figure(
            path("cost_vs_robustness"),
            "training cost per epoch, pgd_at = 1 (round-robin step timing)",
            "worst-case robust accuracy (%)",
            tradeoff,
            log_x=True,
        )
    sweep = _sweep_curves(rows)
    if sweep:
        files["sweep"] = _figure(
            path("robustness_vs_eps"), "eps (l-inf)", "worst-case robust accuracy (%)", sweep
        )
    files["grad_l1"] = _figure(
        path("grad_l1"),
        "epoch",
        "mean ||grad_x CE||_1 (clean test batch)",
        _grad_curves(rows),
        log_y=True,
    )
    return files
