"""Merging the reports of shards of one evaluation into the report of the whole.

An evaluation too long for one sitting runs as shards: consecutive ranges of
images of one split, each its own `apps.evaluate` run with the same model,
attacks, eps, settings and seed. `merge_reports` adds them up into the report
one run over all their images would have written:

```python
from sq_keras import evaluation

merged = evaluation.merge_report_files(["shard0.json", "shard1.json"])
evaluation.write_report(merged, "merged.json")
```

Every accuracy is turned back into its number of examples, and the counts
are added: the clean accuracy, each attack's robust accuracy per eps and the
worst case per eps are those of the whole range, never an average of
percentages. `robust_examples` are shifted from a shard's own indices to
indices in the merged range. Times add up, the mean Square queries are
weighted by the examples attacked; a median cannot be combined from medians,
so `median_queries` is None. The masking checks run again on the merged
numbers, and a check that failed in any shard fails in the merged report too.

Shards that cannot be merged are refused with a `MergeError` naming the
files: a different model file (by the sha256 `apps.evaluate` records as
`model_sha256`), dataset, attacks or their settings, eps, seed, precision,
mode, and overlapping or non-contiguous image ranges (the merged report must
describe one range, `test[a:b]`, as a single run would).
"""

import dataclasses

from sq_keras import jsonio
from sq_keras.data.datasets import split_slice
from sq_keras.evaluation.batch_store import differences
from sq_keras.evaluation.checks import masking_checks
from sq_keras.evaluation.registry import REGISTRY
from sq_keras.evaluation.report import Report
from sq_keras.evaluation.report import percent

_RERUN = "evaluate every shard with the same apps.evaluate flags but --split"


class MergeError(ValueError):
    """Shard reports that cannot be merged into the report of one run."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard's report and the images it covers.

    Attributes:
        name: How errors name it (its file).
        report: Its `Report`.
        base: The split its images come from, e.g. "test".
        start: Index in `base` of its first image.
        stop: One past the index of its last image.
    """

    name: str
    report: Report
    base: str
    start: int
    stop: int

    @property
    def num_examples(self):
        """Images it evaluated."""
        return self.stop - self.start

    @property
    def split(self):
        """Its images as a split string, e.g. "test[2500:5000]"."""
        return f"{self.base}[{self.start}:{self.stop}]"


def read_report(path):
    """The `Report` of a JSON file written by `apps.evaluate` or `write_report`."""
    return Report.from_json(jsonio.read_json(path))


def shard_of(report, name):
    """The `Shard` of `report`: its split's slice start plus its examples.

    `apps.evaluate` takes the first `num_examples` of `--split`, so a report
    of `--split=test[2500:5000]` covers `test[2500:2500 + num_examples]`.

    Raises:
        MergeError: The report records no split, or one that does not say
            where its images start.
    """
    split = report.metadata.get("split")
    try:
        base, start, stop = split_slice(split)
    except ValueError:
        raise MergeError(
            f"{name} records no split like 'test' or 'test[2500:5000]' (split={split!r}): "
            "merge reports written by apps.evaluate."
        ) from None
    if (start or 0) < 0 or (stop or 0) < 0:
        raise MergeError(
            f"{name} has split {split!r}, counted from the end of the split: "
            "evaluate shards with non-negative bounds, e.g. --split=test[7500:10000]."
        )
    start = start or 0
    return Shard(name, report, base, start, start + report.num_examples)


def _identity(shard):
    """Everything that must be equal for shards of one run."""
    report, metadata = shard.report, shard.report.metadata
    return {
        "model_sha256": metadata.get("model_sha256"),
        "source_model_sha256": metadata.get("source_model_sha256"),
        "dataset": metadata.get("dataset"),
        "split": shard.base,
        "seed": metadata.get("seed"),
        "mixed_precision": metadata.get("mixed_precision"),
        "tensor_float_32": metadata.get("tensor_float_32"),
        "num_classes": report.num_classes,
        "has_quantizer": report.has_quantizer,
        "eps": report.eps,
        "eps_values": report.eps_values,
        "large_eps_added": report.large_eps_added,
        "attacks": list(report.attacks),
        "attack_settings": {name: entry["settings"] for name, entry in report.attacks.items()},
        "skipped": sorted(report.skipped),
        "settings": report.settings,
        "worst_case_only": report.worst_case_only,
    }


def check_model_recorded(shards):
    """Refuses shards whose report does not identify the model file.

    Raises:
        MergeError: Names the reports without `model_sha256`.
    """
    missing = [s.name for s in shards if not s.report.metadata.get("model_sha256")]
    if missing:
        raise MergeError(
            f"{', '.join(missing)} record(s) no model_sha256, so nothing shows that every "
            "shard attacked the same model file: evaluate the shards with apps.evaluate, "
            "which records the sha256 of the model file in the report."
        )


def check_same_run(shards):
    """Refuses shards that differ in anything but their images.

    Raises:
        MergeError: Names the first shard and each differing one, with the
            differences.
    """
    first = _identity(shards[0])
    for shard in shards[1:]:
        found = differences(first, _identity(shard))
        if found:
            raise MergeError(
                f"{shards[0].name} and {shard.name} are not shards of one evaluation ("
                + "; ".join(found)
                + f"): {_RERUN}."
            )


def check_contiguous(shards):
    """Refuses overlapping ranges and gaps between `shards` (sorted by start).

    Raises:
        MergeError: Names the two shards and the overlap or missing images.
    """
    for before, after in zip(shards, shards[1:]):
        if after.start < before.stop:
            raise MergeError(
                f"{before.name} ({before.split}) and {after.name} ({after.split}) overlap: "
                "their images would count twice; merge shards of disjoint ranges."
            )
        if after.start > before.stop:
            missing = f"{before.base}[{before.stop}:{after.start}]"
            raise MergeError(
                f"{before.name} ({before.split}) and {after.name} ({after.split}) leave "
                f"{missing} out: evaluate --split={missing} --num_examples=0 with the same "
                "flags and merge its report too (a merged report covers one range)."
            )


def _count(shard, value, total, what):
    """The number of examples behind percentage `value` of `total`."""
    count = value * total / 100.0
    # Percentages have 4 decimals: 0.00005 points of `total` examples.
    if abs(count - round(count)) > 5e-7 * total + 1e-6:
        raise MergeError(
            f"{shard.name}: {what} = {value}% of {total} examples is no whole number of "
            "examples: merge the reports as apps.evaluate wrote them."
        )
    return round(count)


def _merged_percent(shards, values, total, what):
    """`percent` of the examples summed over shards, from each shard's `values`."""
    counts = [_count(s, v, s.num_examples, what) for s, v in zip(shards, values)]
    return percent(sum(counts), total)


def _attacked(shard, result):
    return result.get("attacked_examples", shard.num_examples)


def _mean_queries(shards, results):
    """Mean Square queries over every attacked example, or None."""
    weighted = [
        (_attacked(s, r), r["mean_queries"])
        for s, r in zip(shards, results)
        if r.get("mean_queries") is not None and _attacked(s, r)
    ]
    attacked = sum(n for n, _ in weighted)
    return sum(n * q for n, q in weighted) / attacked if attacked else None


def _merged_result(shards, name, key, cascade):
    """One attack's merged result at one eps key."""
    results = [s.report.attacks[name]["results"][key] for s in shards]
    total = sum(s.num_examples for s in shards)
    accuracies = [r["robust_accuracy"] for r in results]
    seconds = sum(r["seconds"] for r in results)
    attacked = sum(_attacked(s, r) for s, r in zip(shards, results))
    merged = {
        "robust_accuracy": _merged_percent(shards, accuracies, total, f"{name} at eps={key}"),
        "seconds": round(seconds, 3),
        "images_per_second": round(attacked / seconds, 2) if seconds > 0 else None,
    }
    if cascade:
        merged["attacked_examples"] = attacked
    if any("mean_queries" in r for r in results):
        merged["mean_queries"] = _mean_queries(shards, results)
        merged["median_queries"] = None  # The median of the union is not in the shards.
    if "step_size" in results[0]:
        merged["step_size"] = results[0]["step_size"]
    return merged


def _merged_attacks(shards):
    """The `attacks` dict of the merged report."""
    first = shards[0].report
    return {
        name: {
            "settings": entry["settings"],
            "results": {
                key: _merged_result(shards, name, key, first.worst_case_only)
                for key in entry["results"]
            },
        }
        for name, entry in first.attacks.items()
    }


def _robust_examples(shards):
    """The robust indices of the merged range (complete when each shard's
    list is; a shard written before the lists were kept whole lists its
    first 1000 only)."""
    start = shards[0].start
    return [i + s.start - start for s in shards for i in s.report.robust_examples]


def _weighted(shards, field):
    """A per-example share (percent) of the merged range, weighted by examples."""
    total = sum(s.num_examples for s in shards)
    return sum(getattr(s.report, field) * s.num_examples for s in shards) / total


def _combined_checks(merged, shards, registry):
    """The masking checks of the merged numbers; one failed in a shard fails."""
    checks = masking_checks(merged, registry=registry)
    for name, check in checks.items():
        failed = [s for s in shards if s.report.checks.get(name, {}).get("passed") is False]
        if failed:
            names = ", ".join(s.name for s in failed)
            shard_message = failed[0].report.checks[name]["message"]
            check.update(
                passed=False,
                message=f"{check['message']} Failed in {names} ({failed[0].name}: {shard_message})",
                failed_in_shards=[s.name for s in failed],
            )
    return checks


def _shard_entry(shard):
    """What the merged report records of a shard."""
    report = shard.report
    return {
        "report": shard.name,
        "split": shard.split,
        "num_examples": shard.num_examples,
        "clean_accuracy": report.clean_accuracy,
        "worst_case_accuracy": report.worst_case_accuracy,
        "versions": report.metadata.get("versions"),
        "evaluated": report.metadata.get("evaluated"),
    }


def _metadata(shards):
    """The first shard's metadata with the merged split and the shards listed
    (each with its own `evaluated` run)."""
    split = f"{shards[0].base}[{shards[0].start}:{shards[-1].stop}]"
    first = {k: v for k, v in shards[0].report.metadata.items() if k != "evaluated"}
    return {
        **first,
        "split": split,
        "shards": [_shard_entry(s) for s in shards],
    }


def _merged_report(shards, registry):
    """The `Report` of `shards`, checked and sorted by start."""
    first = shards[0].report
    total = sum(s.num_examples for s in shards)
    by_eps = {
        key: _merged_percent(
            shards, [s.report.worst_case_accuracy_by_eps[key] for s in shards], total, "worst case"
        )
        for key in first.worst_case_accuracy_by_eps
    }
    merged = dataclasses.replace(
        first,
        num_examples=total,
        clean_accuracy=_merged_percent(
            shards, [s.report.clean_accuracy for s in shards], total, "clean_accuracy"
        ),
        attacks=_merged_attacks(shards),
        worst_case_accuracy_by_eps=by_eps,
        worst_case_accuracy=_merged_percent(
            shards, [s.report.worst_case_accuracy for s in shards], total, "worst case"
        ),
        robust_examples=_robust_examples(shards),
        zero_gradient_examples_percent=_weighted(shards, "zero_gradient_examples_percent"),
        zero_gradient_entries_percent=_weighted(shards, "zero_gradient_entries_percent"),
        checks={},
        metadata=_metadata(shards),
        examples=None,
    )
    merged.checks = _combined_checks(merged, shards, registry)
    return merged


def merge_reports(reports, *, names=None, registry=REGISTRY):
    """Merges shard reports of one evaluation into the report of the whole.

    Args:
        reports: `Report`s of consecutive image ranges of one split, in any
            order, each with the `split` and `model_sha256` that
            `apps.evaluate` records.
        names: How errors name each report (its file); default "report <i>".
        registry: The attack `Registry` of the masking checks.

    Returns:
        A `Report` of all their images, as one run over the merged range
        would have written it, without the figure's `examples`.

    Raises:
        MergeError: No reports, or reports that cannot be merged; the
            message names the files and says what to do.
    """
    reports = list(reports)
    if not reports:
        raise MergeError("No reports to merge: pass the JSON reports of the shards.")
    names = list(names) if names is not None else [f"report {i}" for i in range(len(reports))]
    shards = sorted(
        (shard_of(report, name) for report, name in zip(reports, names, strict=True)),
        key=lambda shard: shard.start,
    )
    check_model_recorded(shards)
    check_same_run(shards)
    check_contiguous(shards)
    return _merged_report(shards, registry)


def merge_report_files(paths, *, registry=REGISTRY):
    """`merge_reports` of the JSON reports at `paths`, named by their paths.

    Raises:
        MergeError: As `merge_reports`.
        FileNotFoundError: A path that does not exist.
    """
    paths = list(paths)
    return merge_reports([read_report(p) for p in paths], names=paths, registry=registry)
