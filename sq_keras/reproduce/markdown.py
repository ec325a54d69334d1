"""The comparison as a Markdown table, with the notes that explain it.

Parts, in order: a provenance line, the table (header, then one line per
row), the headline tables (one per cascade run on more test images), the recipe
selection, the reference's curve, the held-out curves, the notes on timing
and the list of variants.
"""

from sq_keras.reproduce.variants import REFERENCE

_COST_COLUMNS = (
    "failed checks",
    "s/step",
    "s/epoch (wall)",
    "epochs",
    "speed-up/epoch vs pgd_at",
    "speed-up to its robustness vs pgd_at",
)

_TIMING_NOTE = (
    "s/step: median seconds of one train step (batch 128), every variant's step "
    "timed round-robin in one process, so the ratios do not depend on other load "
    "on the machine; the speed-ups use them. s/epoch (wall): median wall-clock "
    "epoch of the actual training run, which shares the machine with whatever "
    "else ran."
)


def provenance_line(payload):
    """Which command, commit, machine and versions made the table."""
    env = payload["environment"]
    trained = sorted({r["trained_at_commit"] for r in payload["rows"] if r["trained_at_commit"]})
    return (
        f"Made by `{payload['command'] or 'sq_keras.reproduce.run'}` (seed {payload['seed']}, "
        f"training policy {payload['policy']}) at commit {env['git_commit']}, models trained "
        f"at {', '.join(trained) or 'unknown commits'}; {env['machine']}, TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}."
    )


def _fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def _line(cells):
    return "| " + " | ".join(cells) + " |"


def _header(columns, *, holdout):
    head = ["variant", "clean", *columns, "worst case"]
    if holdout:
        head.append("held-out worst case")
    head += _COST_COLUMNS
    return [_line(head), "|" + "---|" * len(head)]


def _reach_cell(row):
    if "speedup_to_reach_vs_pgd_at" not in row:
        return "-"
    reach = row["speedup_to_reach_vs_pgd_at"]
    return "pgd_at never as robust" if reach is None else f"{reach:.1f}x"


def _row_line(row, columns, *, holdout):
    cells = [row["name"], _fmt(row["clean_accuracy"])]
    cells += [_fmt(row["robust_accuracy"].get(a)) for a in columns]
    cells.append(_fmt(row["worst_case_accuracy"]))
    if holdout:
        cells.append(_fmt(row.get("holdout_worst_case_accuracy")))
    checks = ", ".join(row["failed_checks"]) or "none"
    cells += [
        checks if row["tested"] else "not attacked on the test set",
        f"{row['seconds_per_step']:.3f}",
        _fmt(row["seconds_per_epoch"], "{:.1f}"),
        str(row["epochs"]),
        _fmt(row.get("speedup_per_epoch_vs_pgd_at"), "{:.1f}x"),
        _reach_cell(row),
    ]
    return _line(cells)


def _table(rows, columns, eps):
    holdout = any("holdout_worst_case_accuracy" in r for r in rows)
    tested = [r["num_examples"] for r in rows if r["tested"]]
    title = (
        f"Robust accuracy (%) at eps = {eps:g} on {tested[0]} test images."
        if tested
        else f"Held-out robust accuracy (%) at eps = {eps:g}; nothing was attacked on the "
        "test set (a selection only)."
    )
    return [
        title,
        "",
        *_header(columns, holdout=holdout),
        *(_row_line(r, columns, holdout=holdout) for r in rows),
    ]


def _headline_lines(rows):
    """One table per headline preset: a line per row that has it."""
    presets = list(dict.fromkeys(p for r in rows for p in r.get("headlines", {})))
    lines = []
    for preset in presets:
        lines += _preset_lines(preset, [r for r in rows if preset in r.get("headlines", {})])
    return lines


def _preset_lines(preset, rows):
    """The `preset` cascade on more images: robust accuracy after each attack."""
    heads = [r["headlines"][preset] for r in rows]
    attacks = list(dict.fromkeys(a for head in heads for a in head["attacks"]))
    lines = [
        "",
        f"`{preset}` as a cascade (each attack only on the images every earlier one failed "
        "on; the `bpda_*` attacks differentiate through the quantizer's stand-in): robust "
        "accuracy (%) after each attack, on the first N test images.",
        "",
        _line(["variant", "N", "clean", *(f"after {a}" for a in attacks), "worst case"]),
        "|" + "---|" * (len(attacks) + 4),
    ]
    for r, head in zip(rows, heads):
        cells = [r["name"], str(head["num_examples"]), _fmt(head["clean_accuracy"])]
        cells += [_fmt(head["robust_accuracy"].get(a)) for a in attacks]
        cells.append(_fmt(head["worst_case_accuracy"]))
        lines.append(_line(cells))
    return lines


def _selection_lines(selection):
    attacks = selection.get("attacks")
    over = " + ".join(attacks) if attacks else "the suite"
    text = (
        f"Recipe selection: worst case over {over} on {selection['num_examples']} "
        f"held-out training images (`{selection['split']}`, never trained on); "
        f"selected: `{selection['selected']}`."
    )
    if selection.get("untested") and not selection["tested_candidates"]:
        text += " No candidate is attacked on the test set (a selection only)."
    elif selection.get("untested"):
        tested = ", ".join(f"`{n}`" for n in selection["tested_candidates"])
        text += (
            f" Of the candidates, only {tested} (the selected one and the paper's recipe) "
            "are attacked on the test set; the others keep their held-out numbers."
        )
    return ["", text]


def _curve_lines(curve):
    points = ", ".join(f"{p['epoch']}: {p['robust_accuracy']:.1f}" for p in curve["points"])
    return [
        "",
        f"`{REFERENCE}` robust accuracy after each epoch ({' + '.join(curve['attacks'])}, "
        f"worst case, same test images): {points}. The speed-up to a variant's "
        f"robustness is the training cost `{REFERENCE}` needs to first reach the "
        "variant's worst case, over the variant's training cost.",
    ]


def _holdout_curve_lines(curves, rows):
    """One line per run: held-out robustness after each epoch and the
    speed-up to reach its final value."""
    first = next(iter(curves.values()))
    lines = [
        "",
        f"Held-out robust accuracy after each epoch ({' / '.join(first['attacks'])}, worst "
        f"case, `{first['split']}`); speed-up to reach: the training cost `{REFERENCE}` "
        "needs to first reach the run's final held-out value, over the cost the run "
        "needs to first reach it.",
        "",
    ]
    by_name = {r["name"]: r for r in rows}
    for name, curve in curves.items():
        points = ", ".join(f"{p['epoch']}: {p['robust_accuracy']:.1f}" for p in curve["points"])
        line = f"- `{name}`: {points}"
        if "holdout_speedup_to_reach_vs_pgd_at" in by_name.get(name, {}):
            reach = by_name[name]["holdout_speedup_to_reach_vs_pgd_at"]
            line += "; " + ("pgd_at never as robust" if reach is None else f"{reach:.1f}x")
        lines.append(line)
    return lines


def _variant_line(row):
    flags = "".join(f" --{k}={v}" for k, v in row["settings"].items())
    return f"- `{row['name']}`: {row['note']} (`--method={row['method']}`{flags})"


def markdown(
    rows, columns, eps, *, selection=None, curve=None, provenance=None, holdout_curves=None
):
    """The Markdown page of the comparison.

    Args:
        rows: Rows of `table.build_rows`.
        columns: Attack columns, in order; those no row has are left out.
        eps: The table's radius.
        selection: The held-out selection record, or None.
        curve: The reference's curve, or None.
        provenance: A first line saying how the table was made, or None.
        holdout_curves: `{name: held-out curve}`, or None.

    Returns:
        The page, ending in a newline.
    """
    columns = [a for a in columns if any(a in r["robust_accuracy"] for r in rows)]
    lines = [provenance, ""] if provenance else []
    lines += _table(rows, columns, eps)
    lines += _headline_lines(rows)
    if selection:
        lines += _selection_lines(selection)
    if curve:
        lines += _curve_lines(curve)
    if holdout_curves:
        lines += _holdout_curve_lines(holdout_curves, rows)
    lines += ["", _TIMING_NOTE, "", "Variants:", ""]
    lines += [_variant_line(r) for r in rows]
    return "\n".join(lines) + "\n"
