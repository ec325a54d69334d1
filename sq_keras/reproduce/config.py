"""`ComparisonConfig`: what one comparison trains, attacks and writes.

```python
config = ComparisonConfig(dataset="mnist", epochs=10, runs_dir="runs/reproduce",
                          output_dir="results", num_examples=1000)
run(MNIST_VARIANTS, config)
```
"""

import dataclasses
import typing

from sq_keras import evaluation
from sq_keras.reproduce.attacking import DEFAULT_SETTINGS
from sq_keras.reproduce.attacking import HEADLINE_ATTACKS

DEFAULT_ATTACKS = ("strong",)
DEFAULT_EPS_VALUES = (0.3,)


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    """The settings of one side-by-side comparison (`sq_keras.reproduce.run`).

    Attributes:
        dataset: Dataset name.
        epochs: Training epochs of every variant (a variant may set its own).
        runs_dir: One run directory per variant; reruns resume.
        output_dir: Where `<dataset>.json`, `<dataset>.md` and the figures go.
        num_examples: Test images attacked per variant.
        attacks: Attack names or presets of `sq_keras.evaluation`.
        eps_values: Radii; the first is the table's.
        settings: `evaluation.AttackSettings` of the suite; default
            `DEFAULT_SETTINGS`, PGD-100 with 5 restarts and 5000 Square
            queries (the strongest setting measured).
        data_dir: Local dataset directory.
        seed: Training seed of every variant.
        policy: Training dtype policy (must be the global one).
        eval_policy: Dtype policy the attacked models are rebuilt in.
        train_examples: Use only the first N training examples.
        holdout_examples: With `train_examples`, also attack the candidate
            variants on this many training images after the first
            `train_examples` (never trained on) and select the candidate
            with the best worst case there.
        curve_examples: Test images scoring the reference after each epoch
            (default: `num_examples`); 0 skips the curves, this one and the
            held-out ones (the reference and every candidate after each
            epoch, on the held-out images).
        timing_steps: Steps per variant and repeat of the round-robin timing
            of the train steps, which sets the cost ratios.
        timing_repeats: Repeats of that timing (the median is kept).
        train_only: Stop after training.
        test_unselected: With a held-out selection, attack every candidate on
            the test set; by default only the selected one and `baseline`
            candidates are (the others keep their held-out numbers).
        selection_attacks: Attacks of the held-out selection (default:
            `attacks`), e.g. a cheaper screen of many candidates.
        select_only: Stop after the held-out selection (and its curves):
            nothing is attacked on the test set.
        headline_examples: Also attack the selected recipe (every tested
            candidate without a selection) and the reference with each of
            `headline_attacks` as a cascade on this many test images (0: no
            headline), resuming from finished batches: the table's numbers
            on many more images than the whole suite runs on.
        headline_attacks: Presets (or attack names) of the headline, each
            run as its own cascade on its own settings (the suite's seed
            only); e.g. `("autoattack", "strong")` adds the whole suite.
        command: The command line that ran this, recorded in the output.

    Raises:
        ValueError: A held-out selection without `train_examples`,
            `select_only` without a selection, a negative
            `headline_examples`, or headline presets that are not unique.
    """

    dataset: str
    epochs: int
    runs_dir: str
    output_dir: str
    num_examples: int
    attacks: typing.Sequence[str] = DEFAULT_ATTACKS
    eps_values: typing.Sequence[float] = DEFAULT_EPS_VALUES
    settings: evaluation.AttackSettings = DEFAULT_SETTINGS
    data_dir: typing.Optional[str] = None
    seed: int = 0
    policy: str = "float32"
    eval_policy: str = "float32"
    train_examples: typing.Optional[int] = None
    holdout_examples: int = 0
    curve_examples: typing.Optional[int] = None
    timing_steps: int = 20
    timing_repeats: int = 5
    train_only: bool = False
    test_unselected: bool = False
    selection_attacks: typing.Optional[typing.Sequence[str]] = None
    select_only: bool = False
    headline_examples: int = 0
    headline_attacks: typing.Sequence[str] = HEADLINE_ATTACKS
    command: typing.Optional[str] = None

    def __post_init__(self):
        if self.holdout_examples and self.train_examples is None:
            raise ValueError(
                "`holdout_examples` needs `train_examples`: the held-out images are the "
                "training images after the first `train_examples`."
            )
        if self.select_only and not self.holdout_examples:
            raise ValueError("`select_only` needs a held-out selection (`holdout_examples` > 0).")
        if self.headline_examples < 0:
            raise ValueError(
                f"`headline_examples` must be >= 0. Received: {self.headline_examples}"
            )
        if len(set(self.headline_attacks)) != len(self.headline_attacks):
            raise ValueError(
                "`headline_attacks` must be unique. Received: " + ", ".join(self.headline_attacks)
            )

    @property
    def eps(self):
        """The table's radius: the first of `eps_values`."""
        return float(self.eps_values[0])
