r"""Merges the reports of shards of one evaluation into one report.

Usage:
  python -m apps.merge_reports --reports=shard0.json,shard1.json \
      --output=results/merged.json
  python -m apps.merge_reports --reports='results/shard*.json' --output=results/merged.json

Each shard is an apps.evaluate run on consecutive images of one split
(--split=test[0:2500] --num_examples=0, then test[2500:5000], ...) with the
same model, attacks, eps, settings and seed. The merged report is the one a
single run over all their images would have written: accuracies from the
summed counts, one worst case, robust indices in the merged range, masking
checks on the merged numbers (failing where any shard failed). Shards that
cannot be merged (another model file, settings, overlapping or missing
images) are refused with the files named. Writes the JSON report and
<stem>_sweep.png at --output and prints the table.
"""

import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import evaluation  # noqa: E402

_REPORTS = flags.DEFINE_list(
    "reports", None, "Shard reports: comma list of JSON files or glob patterns (quote them)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Path of the merged JSON report.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Write TensorBoard summaries here.")


def _report_paths(patterns):
    """The files of `patterns` (each a path or glob), sorted, without repeats."""
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise SystemExit(f"Error: --reports pattern {pattern!r} matches no file.")
        paths += [p for p in found if p not in paths]
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not _REPORTS.value or not _OUTPUT.value:
        raise SystemExit(
            "Error: give --reports=a.json,b.json (or a glob) and --output=merged.json."
        )
    paths = _report_paths(_REPORTS.value)
    if os.path.abspath(_OUTPUT.value) in map(os.path.abspath, paths):
        raise SystemExit(f"Error: --output {_OUTPUT.value} is one of the shards: pick another.")
    try:
        report = evaluation.merge_report_files(paths)
    except (ValueError, OSError) as e:
        raise SystemExit(f"Error: {e}") from None
    written = evaluation.write_report(report, _OUTPUT.value, logdir=_LOGDIR.value)
    print(evaluation.format_table(report))
    for name, message in evaluation.failed_checks(report):
        logging.warning("Masking check %s failed: %s", name, message)
    print(
        f"Merged {len(paths)} reports ({report.num_examples} examples): {written['files']['json']}"
    )


if __name__ == "__main__":
    app.run(main)
