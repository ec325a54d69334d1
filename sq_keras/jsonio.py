"""JSON files that survive a crash: written whole or not at all.

`write_json` writes to a temporary file beside the target and renames it over
the target (`os.replace` is atomic on POSIX), so a run killed mid-write leaves
the previous version, never half a file. Values from numpy (integers, floats,
booleans, arrays inside lists) are converted; NaN becomes `null`.

```python
from sq_keras import jsonio

jsonio.write_json("runs/x/results.json", {"accuracy": np.float32(0.99)})
jsonio.read_json("runs/x/results.json")["accuracy"]
```
"""

import json
import math
import os

import numpy as np


def jsonable(value):
    """`value` with numpy scalars as Python ones, tuples as lists, NaN as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path, payload, *, sort_keys=False):
    """Writes `payload` to `path` atomically, creating its directory.

    Args:
        path: Target file.
        payload: JSON-serialisable data; numpy values are converted.
        sort_keys: Sort object keys (stable diffs for configs and histories).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(jsonable(payload), f, indent=2, sort_keys=sort_keys)
    os.replace(tmp, path)


def read_json(path):
    """The parsed contents of the JSON file at `path`."""
    with open(path) as f:
        return json.load(f)
