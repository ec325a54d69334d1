r"""Rewrites the generated tables of a Markdown page from their JSON.

Usage:
  python -m apps.summarize --page=README.md

Every block of --page that begins with the line

  <!-- generated from results/mnist.json by python -m apps.summarize -->

and ends with `<!-- end of generated table -->` is replaced by the short
table of that comparison (`sq_keras.reproduce.summary`), or, for a report of
`apps.evaluate` or `apps.merge_reports`, by the table of its attacks, and
for a per-image combination (`apps.merge_reports --combine`) by each
evaluation's worst case and the worst case over all; the JSON path is
relative to the page's directory. Run it after `apps.reproduce` has written
a new comparison or a report has changed; the README's test checks that the
blocks are current.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from sq_keras.reproduce import summary  # noqa: E402

_PAGE = flags.DEFINE_string("page", "README.md", "Markdown page whose generated tables to rewrite.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    path = _PAGE.value
    try:
        with open(path) as f:
            page = f.read()
        new_page, count = summary.replace_blocks(page, os.path.dirname(os.path.abspath(path)))
    except (OSError, ValueError) as e:
        raise SystemExit(f"Error: {e}") from None
    if not count:
        begin = summary.BEGIN.format(path="<json path>")
        raise SystemExit(f"Error: {path} has no block beginning with {begin!r}.")
    with open(path, "w") as f:
        f.write(new_page)
    changed = "rewrote" if new_page != page else "checked (unchanged)"
    print(f"{changed} {count} generated table(s) in {path}.")


if __name__ == "__main__":
    app.run(main)
