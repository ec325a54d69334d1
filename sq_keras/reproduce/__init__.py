"""Side-by-side reproduction: train several methods, attack each, tabulate.

Every variant is a training method plus settings. `run` trains each one
(resuming any run already in `runs_dir`), attacks each with the evaluation
suite (skipping variants whose report exists), and writes a JSON and a
Markdown table with robustness, masking checks and training cost, plus
figures: worst-case robust accuracy against eps for every variant, the
`grad_l1` curves over training and, when the speed-ups are known, training
cost against robustness.

```python
config = ComparisonConfig(dataset="mnist", epochs=10, runs_dir="runs/reproduce",
                          output_dir="results", num_examples=1000)
results = run(MNIST_VARIANTS, config)
```

A stopped run continues where it stopped: rerun the same call.

Modules: `variants` (what is compared), `config` (the comparison's
settings), `stages` (training, step timing, held-out selection, test attacks,
the reference's curve), `attacking` (every call into `sq_keras.evaluation`),
`table` (the rows), `markdown` and `figures` (the outputs), `pipeline`
(`run`, composing them) and `summary` (the README's short table, made from
the JSON by `apps.summarize`).
"""

from sq_keras.reproduce.attacking import DEFAULT_SETTINGS
from sq_keras.reproduce.attacking import HEADLINE_ATTACKS
from sq_keras.reproduce.config import DEFAULT_ATTACKS
from sq_keras.reproduce.config import DEFAULT_EPS_VALUES
from sq_keras.reproduce.config import ComparisonConfig
from sq_keras.reproduce.pipeline import run
from sq_keras.reproduce.table import epochs_to_reach
from sq_keras.reproduce.variants import CURVE_ATTACKS
from sq_keras.reproduce.variants import MNIST_VARIANTS
from sq_keras.reproduce.variants import REFERENCE
from sq_keras.reproduce.variants import VARIANTS
from sq_keras.reproduce.variants import WARMUP_STEPS
from sq_keras.reproduce.variants import Variant

__all__ = [
    "CURVE_ATTACKS",
    "ComparisonConfig",
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS_VALUES",
    "DEFAULT_SETTINGS",
    "HEADLINE_ATTACKS",
    "MNIST_VARIANTS",
    "REFERENCE",
    "VARIANTS",
    "WARMUP_STEPS",
    "Variant",
    "epochs_to_reach",
    "run",
]
