"""The worst case per image over several evaluations of the same images.

Attacks on one model sometimes run as separate evaluations: a long cascade in
shards (merged with `merge_reports`), then a transfer attack once a source
model exists, or a second implementation of an attack. Each report lists the
images it left robust (`robust_examples`); an image is robust only if every
evaluation left it, so the combined worst case is the share of images in all
the lists. A minimum of the reports' percentages would overstate it whenever
two evaluations break different images.

```python
from sq_keras import evaluation

combined = evaluation.combine_report_files(
    ["results/strong_merged.json", "results/transfer.json"])
combined["worst_case_accuracy"], combined["evaluations"][1]["breaks_alone"]
```

The reports must attack the same model file (`model_sha256`), dataset and
primary eps, and list every robust image (reports written before the lists
were kept whole, which list the first 1000 only, are refused when they were
cut). They may cover different ranges of one split: the combination covers
the images all of them cover. Its clean accuracy is that of a report over
exactly that range (the lowest, if several), or None when none is.
"""

from sq_keras import jsonio
from sq_keras.evaluation.merge import MergeError
from sq_keras.evaluation.merge import read_report
from sq_keras.evaluation.merge import shard_of
from sq_keras.evaluation.report import percent


def _check_same_images(shards):
    """Refuses reports of other models, datasets, splits or eps.

    Raises:
        MergeError: Names the first report and the differing one.
    """

    def identity(shard):
        metadata = shard.report.metadata
        return {
            "model_sha256": metadata.get("model_sha256"),
            "dataset": metadata.get("dataset"),
            "split": shard.base,
            "eps": shard.report.eps,
        }

    first = identity(shards[0])
    if not first["model_sha256"]:
        raise MergeError(
            f"{shards[0].name} records no model_sha256: combine reports written by "
            "apps.evaluate or apps.merge_reports."
        )
    for shard in shards[1:]:
        found = {k: (first[k], v) for k, v in identity(shard).items() if v != first[k]}
        if found:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in found.items())
            raise MergeError(
                f"{shards[0].name} and {shard.name} do not evaluate the same model on the "
                f"same images ({listed}): combine evaluations of one model file, dataset "
                "and eps."
            )


def _robust_set(shard):
    """The robust images of `shard` as indices in its split.

    Raises:
        MergeError: The report lists fewer robust images than its worst case
            counts (a list cut at 1000 by an older version).
    """
    report = shard.report
    count = round(report.worst_case_accuracy * report.num_examples / 100.0)
    if len(report.robust_examples) != count:
        raise MergeError(
            f"{shard.name} lists {len(report.robust_examples)} robust images but its worst "
            f"case counts {count}: its list was cut, so no per-image worst case can be "
            "formed; evaluate again (reports now list every robust image)."
        )
    return {shard.start + i for i in report.robust_examples}


def _evaluation_entry(shard, robust, others, start, stop):
    """What the combination records of one report, on the images `start:stop`."""
    report, metadata = shard.report, shard.report.metadata
    evaluated = metadata.get("evaluated") or [
        s.get("evaluated") for s in metadata.get("shards", [])
    ]
    return {
        "report": shard.name,
        "split": shard.split,
        "attacks": list(report.attacks),
        "skipped": sorted(report.skipped),
        "worst_case_only": report.worst_case_only,
        "clean_accuracy": report.clean_accuracy,
        "worst_case_accuracy": percent(len(robust), stop - start),
        # Images this evaluation broke and every other one left robust.
        "breaks_alone": sorted(i - start for i in others - robust),
        "evaluated": evaluated,
    }


def combine_reports(reports, *, names=None):
    """The per-image worst case over evaluations of the same images.

    Args:
        reports: Two or more `Report`s of one model on ranges of one split
            (`split` and `model_sha256` as `apps.evaluate` records them).
        names: How errors and the result name each report (its file).

    Returns:
        A JSON-able dict: `model_sha256`, `dataset`, `split` (the images
        every report covers), `eps`, `num_examples`, `clean_accuracy`,
        `worst_case_accuracy` (images robust in every report),
        `robust_examples` (their indices within `split`) and `evaluations`,
        one entry per report with its own worst case on these images and the
        images only it broke (`breaks_alone`). Indices count from the
        first image of `split`, as in a report.

    Raises:
        MergeError: Fewer than two reports, reports of other models, data
            or eps, ranges without common images, or cut robust lists.
    """
    reports = list(reports)
    if len(reports) < 2:
        raise MergeError("Combining needs two or more reports of the same images.")
    names = list(names) if names is not None else [f"report {i}" for i in range(len(reports))]
    shards = [shard_of(report, name) for report, name in zip(reports, names, strict=True)]
    _check_same_images(shards)
    start, stop = max(s.start for s in shards), min(s.stop for s in shards)
    if start >= stop:
        raise MergeError(
            "The reports share no image: " + ", ".join(f"{s.name} ({s.split})" for s in shards)
        )
    window = set(range(start, stop))
    robust = [_robust_set(s) & window for s in shards]
    common = set.intersection(*robust)
    exact = [s.report.clean_accuracy for s in shards if (s.start, s.stop) == (start, stop)]
    first = shards[0]
    return {
        "model_sha256": first.report.metadata["model_sha256"],
        "dataset": first.report.metadata.get("dataset"),
        "split": f"{first.base}[{start}:{stop}]",
        "eps": first.report.eps,
        "num_examples": stop - start,
        "clean_accuracy": min(exact) if exact else None,
        "worst_case_accuracy": percent(len(common), stop - start),
        "robust_examples": sorted(i - start for i in common),
        "evaluations": [
            _evaluation_entry(
                shard,
                mine,
                set.intersection(*(r for j, r in enumerate(robust) if j != i)),
                start,
                stop,
            )
            for i, (shard, mine) in enumerate(zip(shards, robust))
        ],
    }


def combine_report_files(paths):
    """`combine_reports` of the JSON reports at `paths`, named by their paths.

    Raises:
        MergeError: As `combine_reports`.
        FileNotFoundError: A path that does not exist.
    """
    paths = list(paths)
    return combine_reports([read_report(p) for p in paths], names=paths)


def write_combined(combined, path):
    """Writes the dict of `combine_reports` to `path` as JSON (atomically)."""
    jsonio.write_json(path, combined)
