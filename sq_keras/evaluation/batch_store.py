"""Per-batch results on disk, so that a long evaluation can resume.

Each finished batch of an attack at one eps is written, atomically, as one
`.npz` file: the indices of the examples it attacked, the target's
predictions on them, the queries and seconds it took, and the adversarial
images of the few examples the report's figure shows (no other images). A
`manifest.json` records what the run is (attacks, eps, settings, examples,
batch size, model, ...); a store holding another run's batches is refused
with the differences listed, unless `overwrite` discards them.

```python
from sq_keras import evaluation

store = evaluation.BatchStore(
    evaluation.batches_dir("results/sq_free.json"),     # results/sq_free_batches/
    run={"model": "runs/mnist_sq_free", "dataset": "mnist"},
)
report = evaluation.evaluate(target, images, labels, ..., store=store)
# Killed half-way? The same call again skips every finished batch.
```
"""

import glob
import hashlib
import os
import re
import tempfile

import numpy as np

from sq_keras import jsonio

MANIFEST = "manifest.json"
_FIELDS = ("indices", "predictions", "queries", "seconds", "adversarial")


class StoreMismatch(ValueError):
    """The store holds the batches of a run with other settings."""


def batches_dir(output):
    """The batch folder beside the JSON report `output`: `<stem>_batches/`."""
    return os.path.splitext(os.path.abspath(output))[0] + "_batches"


def file_safe(name):
    """`name` with every character but letters, digits, `_`, `.` and `-`
    replaced by `-`, for use in a file name (`bpda_identity:pgd` ->
    `bpda_identity-pgd`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def digest(*arrays):
    """sha256 of the arrays' dtypes, shapes and bytes (identifies examples)."""
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def file_digest(path):
    """sha256 of a file, or of every file under a directory (sorted paths)."""
    paths = (
        [path]
        if os.path.isfile(path)
        else sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    )
    hasher = hashlib.sha256()
    for name in paths:
        hasher.update(os.path.relpath(name, path).encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()


def differences(stored, current, prefix=""):
    """`"key: stored -> current"` for every leaf that differs, dotted keys."""
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for key in dict.fromkeys([*stored, *current]):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += differences(stored.get(key), current.get(key), name)
        return found
    return [] if stored == current else [f"{prefix}: {stored!r} -> {current!r}"]


class BatchStore:
    """A folder of finished batches of one evaluation run.

    Args:
        directory: The folder (created when needed).
        run: JSON-able description of the run added to what `evaluate`
            records itself (model, dataset, split, precision, ...).
        overwrite: Discard the batches of another run instead of refusing.
        hint: How to get past a refused store, appended to the error.
    """

    def __init__(self, directory, *, run=None, overwrite=False, hint=None):
        self.directory = directory
        self.run = dict(run or {})
        self.overwrite = overwrite
        self.hint = hint or "pass overwrite=True to discard them, or use another directory"

    def begin(self, identity):
        """Opens the store for the run `{**run, **identity}`.

        Raises:
            StoreMismatch: The folder holds batches of another run and
                `overwrite` is False; the message lists the differences.
        """
        current = jsonio.jsonable({**self.run, **identity})
        path = os.path.join(self.directory, MANIFEST)
        if os.path.isfile(path):
            found = differences(jsonio.read_json(path), current)
            if found and not self.overwrite:
                raise StoreMismatch(
                    f"{self.directory} holds the batches of another run ("
                    + "; ".join(found)
                    + f"): {self.hint}."
                )
            if found:
                self.clear()
        os.makedirs(self.directory, exist_ok=True)
        jsonio.write_json(path, current)

    def clear(self):
        """Removes the manifest and every batch file (nothing else)."""
        for name in glob.glob(os.path.join(self.directory, "*.npz")):
            os.remove(name)
        if os.path.isfile(os.path.join(self.directory, MANIFEST)):
            os.remove(os.path.join(self.directory, MANIFEST))

    def _path(self, entry, eps, index):
        return os.path.join(self.directory, f"{file_safe(entry)}_eps{eps:g}_batch{index:05d}.npz")

    def load(self, entry, eps, index):
        """Batch `index` of `entry` at `eps` as a dict, or None if not finished."""
        path = self._path(entry, eps, index)
        if not os.path.isfile(path):
            return None
        with np.load(path) as stored:
            record = {name: stored[name] for name in _FIELDS}
        record["seconds"] = float(record["seconds"])
        return record

    def save(self, entry, eps, index, record):
        """Writes batch `index` of `entry` at `eps` atomically."""
        path = self._path(entry, eps, index)
        handle, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **{name: record[name] for name in _FIELDS})
        os.replace(tmp, path)


def _model_file(path):
    """The file that holds a model's weights: a run directory's `model.keras`
    (not its reports, logs and checkpoints, which change), else `path`."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.keras")):
        return os.path.join(path, "model.keras")
    return path


def model_run(target, *, dataset, split, policy, strategy="default", source_path=None):
    """What a store records of the evaluated model, beside the suite's own identity.

    The model file's digest and training commit, the transfer source, the
    examples' dataset and split, and the dtype policy and strategy the
    attacks ran in: `apps.evaluate` and `apps.reproduce` describe a run alike,
    so the batches of one can resume the other.

    Args:
        target: The `Target` attacked (its `path` and training `config`).
        dataset: Dataset name.
        split: Split name of the examples.
        policy: Dtype policy the target was rebuilt in.
        strategy: Name of the `tf.distribute` strategy.
        source_path: Path of the transfer source model, or None.
    """
    return {
        "model_sha256": file_digest(_model_file(target.path)),
        "model_commit": (target.config or {}).get("environment", {}).get("git_commit"),
        "source_model": source_path,
        "source_model_sha256": file_digest(_model_file(source_path)) if source_path else None,
        "dataset": dataset,
        "split": split,
        "mixed_precision": policy,
        "strategy": strategy,
    }
