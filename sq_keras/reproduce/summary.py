"""The comparison's short table, as the README shows it, and its place there.

`apps.reproduce` writes the whole comparison to `<dataset>.json` and
`<dataset>.md`. A page such as the README shows a shorter table made from
the JSON by `summary`, between two marker lines that name the JSON:

```markdown
<!-- generated from results/mnist.json by python -m apps.summarize -->
...
<!-- end of generated table -->
```

`replace_blocks` rewrites every such block of a page from its JSON, and
`blocks` finds them, so a test can check that a page shows what its JSON
holds.

One row per variant attacked on the test set: clean accuracy, plain PGD,
the strongest BPDA attack, Square, transfer, the worst case over the whole
suite, each headline cascade (such as `autoattack`) on more test images
(where a row has one), the held-out worst case, how many masking checks failed and
the training cost against the reference. The candidates screened on
held-out images only follow in one sentence.

A block may also name a report of `apps.evaluate` (one run, or shards merged
by `apps.merge_reports`): `report_summary` shows its attacks, its worst case
per eps, and where the model and each evaluation run came from. Or the
per-image worst case over several evaluations (`apps.merge_reports
--combine`): `combined_summary` shows each evaluation's worst case on the
common images, the images only it broke, and the worst case over all.
"""

import os
import re

from sq_keras import jsonio
from sq_keras.reproduce.variants import REFERENCE

BEGIN = "<!-- generated from {path} by python -m apps.summarize -->"
END = "<!-- end of generated table -->"
# BEGIN with its path as a group, matched as a whole line.
_BEGIN_PATTERN = re.compile(
    "^" + re.escape(BEGIN).replace(re.escape("{path}"), r"(\S+)") + "$", re.M
)


def _fmt(value, pattern="{:.1f}"):
    return "-" if value is None else pattern.format(value)


def _line(cells):
    return "| " + " | ".join(cells) + " |"


def _bpda(robust):
    """The strongest BPDA attack's accuracy (None: no BPDA attack ran)."""
    values = [v for name, v in robust.items() if name.startswith("bpda")]
    return min(values) if values else None


def _label(row, selected):
    label = f"`{row['name']}`"
    if row["name"] == selected:
        label += " (selected)"
    elif row["name"] == REFERENCE:
        label += " (reference)"
    return label


def _checks(row):
    return str(len(row["failed_checks"])) if row["failed_checks"] else "-"


def _cost(row):
    if row["name"] == REFERENCE:
        return "1"
    return _fmt(row.get("speedup_per_epoch_vs_pgd_at"), "1/{:.1f}")


def _reach(row):
    if "speedup_to_reach_vs_pgd_at" not in row:
        return "-"
    reach = row["speedup_to_reach_vs_pgd_at"]
    return "never reached" if reach is None else f"{reach:.1f}x"


def _headline_columns(rows):
    """`[(preset, images)]` of every headline some row has, the most images
    any row has it on."""
    counts = {}
    for r in rows:
        for preset, head in r.get("headlines", {}).items():
            counts[preset] = max(counts.get(preset, 0), head["num_examples"])
    return list(counts.items())


def _header(payload, rows, *, headlines, holdout):
    settings = payload["attack_settings"]
    tested = rows[0]["num_examples"]
    head = [
        "variant",
        "clean",
        f"PGD-{settings['pgd_steps']} x {settings['restarts']}",
        "BPDA",
        "Square",
        "transfer",
        f"**worst case** ({tested} images)",
    ]
    head += [f"`{preset}`, first {count} images" for preset, count in headlines]
    if holdout:
        head.append("held-out worst case")
    head += ["masking checks failed", "cost per epoch vs `pgd_at`", "speed-up to its robustness"]
    return [_line(head), "|" + "---|" * len(head)]


def _row(row, selected, *, headlines, holdout):
    robust = row["robust_accuracy"]
    cells = [
        _label(row, selected),
        _fmt(row["clean_accuracy"]),
        _fmt(robust.get("pgd")),
        _fmt(_bpda(robust)),
        _fmt(robust.get("square")),
        _fmt(robust.get("transfer")),
        f"**{_fmt(row['worst_case_accuracy'])}**",
    ]
    for preset, _ in headlines:
        head = row.get("headlines", {}).get(preset)
        cells.append(_fmt(head["worst_case_accuracy"], "{:.2f}") if head else "-")
    if holdout:
        cells.append(_fmt(row.get("holdout_worst_case_accuracy")))
    cells += [_checks(row), _cost(row), _reach(row)]
    return _line(cells)


def _screened(row):
    """`name worst-case (cost)` of a candidate screened on held-out images only."""
    cost = row.get("speedup_per_epoch_vs_pgd_at")
    text = f"`{row['name']}` {row['holdout_worst_case_accuracy']:.1f}"
    return text if cost is None else f"{text} (1/{cost:.1f})"


def _untested_sentence(rows, selection):
    untested = [r for r in rows if not r["tested"] and "holdout_worst_case_accuracy" in r]
    if not untested:
        return []
    return [
        "",
        f"Screened on the {selection['num_examples']} held-out images only (worst case %, "
        f"cost per epoch vs `pgd_at`): {', '.join(_screened(r) for r in untested)}.",
    ]


def summary(payload):
    """The short table of a comparison, or of one evaluation, as Markdown lines.

    Args:
        payload: The comparison, as `apps.reproduce` writes it to
            `<dataset>.json`, or a report of `apps.evaluate` (one run or
            shards merged by `apps.merge_reports`): see `report_summary`; or
            their per-image combination: see `combined_summary`.

    Returns:
        The lines, without the markers.

    Raises:
        ValueError: Neither, or no variant was attacked on the test set.
    """
    if isinstance(payload, dict) and "worst_case_accuracy_by_eps" in payload:
        return report_summary(payload)
    if isinstance(payload, dict) and "evaluations" in payload:
        return combined_summary(payload)
    if not isinstance(payload, dict) or "rows" not in payload:
        raise ValueError(
            "Not a comparison written by apps.reproduce (it has no rows) nor a report of "
            "apps.evaluate."
        )
    rows = payload["rows"]
    tested = [r for r in rows if r["tested"]]
    if not tested:
        raise ValueError("No variant was attacked on the test set: there is no table to show.")
    selection = payload.get("selection") or {}
    selected = selection.get("selected")
    headlines = _headline_columns(tested)
    holdout = any("holdout_worst_case_accuracy" in r for r in tested)
    lines = _header(payload, tested, headlines=headlines, holdout=holdout)
    lines += [_row(r, selected, headlines=headlines, holdout=holdout) for r in tested]
    return lines + _untested_sentence(rows, selection)


def report_summary(report):
    """One evaluation's table: robust accuracy per attack at the report's eps.

    A cascade (`worst_case_only`) shows what is robust after each attack,
    every attack on the images the ones before it left; otherwise each
    attack's own accuracy. Then the worst case at each eps, and a paragraph
    naming the model file, its training run and, per shard, the evaluation's
    command, commit and machine where the report records them.
    """
    eps = report["eps"]
    key = _eps_key(report, eps)
    how = "robust after (%)" if report.get("worst_case_only") else "robust (%)"
    head = (
        f"eps = {eps:g}, `{report.get('split', '?')}`: {report['num_examples']:,} images, "
        f"clean {report['clean_accuracy']:.2f}%"
    )
    lines = [_line([head, how]), "|---|---|"]
    for name, entry in report["attacks"].items():
        result = entry["results"].get(key)
        if result is not None:
            lines.append(_line([f"`{name}`", f"{result['robust_accuracy']:.2f}"]))
    lines.append(_line(["**worst case**", f"**{report['worst_case_accuracy']:.2f}**"]))
    for other, value in report["worst_case_accuracy_by_eps"].items():
        if other != key:
            lines.append(_line([f"worst case at eps = {float(other):g}", f"{value:.2f}"]))
    return lines + ["", _provenance(report)]


def combined_summary(combined):
    """The per-image worst case over evaluations of the same images.

    One row per evaluation (its report, how many attacks, its worst case on
    the common images, the images it alone broke), then the worst case over
    all of them, and the model file and each evaluation's runs.
    """
    clean = combined.get("clean_accuracy")
    head = (
        f"eps = {combined['eps']:g}, `{combined['split']}`: {combined['num_examples']:,} images"
        + (f", clean {clean:.2f}%" if clean is not None else "")
    )
    lines = [_line([head, "attacks", "worst case (%)", "broken by it alone"]), "|---|---|---|---|"]
    for entry in combined["evaluations"]:
        attacks = entry["attacks"]
        named = ", ".join(f"`{a}`" for a in attacks) if len(attacks) <= 3 else f"{len(attacks)}"
        lines.append(
            _line(
                [
                    f"`{entry['report']}`",
                    named,
                    f"{entry['worst_case_accuracy']:.2f}",
                    str(len(entry["breaks_alone"])),
                ]
            )
        )
    lines.append(
        _line(["**per image, over all**", "", f"**{combined['worst_case_accuracy']:.2f}**", ""])
    )
    runs = []
    for entry in combined["evaluations"]:
        recorded = entry.get("evaluated")
        recorded = recorded if isinstance(recorded, list) else [recorded]
        known = [r for r in recorded if r]
        where = "; ".join(
            f"`{r['command']}` at {str(r['git_commit'])[:7]} on {r['machine']}, {r['date']}"
            for r in known
        )
        missing = len(recorded) - len(known)
        if missing:
            where += ("; " if where else "") + f"{missing} run(s) not recorded in their reports"
        runs.append(f"`{entry['report']}` ({entry['split']}): {where}.")
    model = f"Model sha256 `{combined['model_sha256'][:12]}`, {combined.get('dataset')}."
    return lines + ["", " ".join([model, *runs])]


def _eps_key(report, eps):
    """The key of `eps` in the report's per-eps results ("0.3")."""
    for key in report["worst_case_accuracy_by_eps"]:
        if abs(float(key) - eps) < 1e-9:
            return key
    raise ValueError(f"The report has no results at its eps {eps}.")


def _provenance(report):
    config = report.get("training_config") or {}
    trained = config.get("environment") or {}
    sha = report.get("model_sha256") or "?"
    parts = [
        f"Model `{report.get('model')}` (sha256 `{sha[:12]}`), trained with `--method="
        f"{config.get('method', '?')}` seed {config.get('seed', '?')} at "
        f"{str(trained.get('git_commit', '?'))[:7]} on {trained.get('machine', '?')}.",
        f"Attacks: seed {report.get('seed')}, {report.get('mixed_precision')}, "
        f"settings {_settings(report.get('settings') or {})}"
        + (f"; skipped: {', '.join(sorted(report['skipped']))}." if report.get("skipped") else "."),
    ]
    runs = report.get("shards") or [report]
    for run in runs:
        evaluated = run.get("evaluated")
        where = (
            f"`{evaluated['command']}` at {str(evaluated['git_commit'])[:7]} on "
            f"{evaluated['machine']}, {evaluated['date']}"
            if evaluated
            else "not recorded in its report"
        )
        label = f"`{run['split']}`" if "shards" in report else "The run"
        parts.append(f"{label}: {where}.")
    return " ".join(parts)


def _settings(settings):
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "seed")


def blocks(page):
    """`[(json path, lines)]` of every generated block in `page`, in order.

    Raises:
        ValueError: A block without its end marker.
    """
    found = []
    for match in _BEGIN_PATTERN.finditer(page):
        rest = page[match.end() :].lstrip("\n")
        end = rest.find(END)
        if end < 0:
            raise ValueError(f"The block generated from {match.group(1)} has no {END!r} line.")
        found.append((match.group(1), rest[:end].rstrip("\n").split("\n")))
    return found


def replace_blocks(page, root):
    """`page` with every generated block made again from its JSON.

    Args:
        page: Markdown text.
        root: The directory the blocks' JSON paths are relative to.

    Returns:
        `(new page, number of blocks)`.

    Raises:
        ValueError: A block without its end marker.
        OSError: A JSON file that cannot be read.
    """
    blocks(page)  # Every block has its end marker.

    def render(match):
        begin = match.group(0).split("\n", 1)[0]
        payload = jsonio.read_json(os.path.join(root, match.group(1)))
        return "\n".join([begin, "", *summary(payload), "", END])

    pattern = re.compile(_BEGIN_PATTERN.pattern + r".*?^" + re.escape(END) + r"$", re.M | re.S)
    return pattern.subn(render, page)
