"""The evaluation report: a typed object whose `to_json()` is the JSON file.

Accuracies are percentages of the evaluated examples. `attacks` is the nested
dict of the JSON file: `{name: {"settings": {...}, "results": {eps_key:
{"robust_accuracy", "seconds", "images_per_second", ...}}}}`, with eps keys
from `eps_key`. Apps add top-level keys (dataset, split, seed, ...) through
`metadata`; the examples for the figure stay in memory.
"""

import dataclasses

from sq_keras import jsonio


def eps_key(eps):
    """The key of `eps` in the report's per-eps dicts, e.g. "0.3"."""
    return f"{eps:g}"


def percent(count, total):
    """`count` of `total` examples as the report's percentage (4 decimals)."""
    return round(100.0 * (count / total), 4)


@dataclasses.dataclass(kw_only=True)
class Report:
    """Results of `evaluate`, in the field order of the JSON file.

    Attributes:
        model: Where the evaluated model was loaded from.
        num_examples: Examples evaluated.
        num_classes: Classes (chance is `100 / num_classes`).
        eps: The primary eps.
        eps_values: The sorted eps sweep.
        large_eps_added: `LARGE_EPS` when the sweep appended it, else None.
        has_quantizer: Whether the model holds a soft-quantization layer.
        clean_accuracy: Accuracy without attack.
        attacks: `{name: {"settings": ..., "results": {eps_key: ...}}}`.
        skipped: `{name: reason}` of the attacks that could not run.
        settings: The suite's `AttackSettings` as a dict.
        worst_case_only: Whether the attacks ran as a cascade, each only on
            the examples every earlier attack failed on; then each attack's
            `robust_accuracy` is "robust after this attack" (and every
            earlier one), with the number of `attacked_examples`.
        worst_case_accuracy_by_eps: `{eps_key: accuracy}` of the examples
            every attack failed on.
        worst_case_accuracy: The worst case at the primary eps.
        robust_examples: Indices of every such example at `eps` (reports
            written before 2026-12-07 list the first 1000 only).
        zero_gradient_examples_percent: Examples with an all-zero gradient.
        zero_gradient_entries_percent: Input entries with a zero gradient.
        checks: The masking checks, `{name: {"passed", "message", ...}}`.
        metadata: Extra top-level keys of the JSON file.
        examples: Clean and adversarial examples for the figure (never
            written): `{"images", "labels", "predictions", "adversarial":
            {name: (images, predictions)}}`.
    """

    model: str = None
    num_examples: int = 0
    num_classes: int
    eps: float
    eps_values: list
    large_eps_added: float = None
    has_quantizer: bool = False
    clean_accuracy: float = None
    attacks: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)
    worst_case_only: bool = False
    worst_case_accuracy_by_eps: dict = dataclasses.field(default_factory=dict)
    worst_case_accuracy: float = None
    robust_examples: list = dataclasses.field(default_factory=list)
    zero_gradient_examples_percent: float = 0.0
    zero_gradient_entries_percent: float = 0.0
    checks: dict = dataclasses.field(default_factory=dict)
    metadata: dict = dataclasses.field(default_factory=dict)
    examples: dict = dataclasses.field(default=None, repr=False)

    def robust_accuracy(self, name, eps):
        """Robust accuracy of attack `name` at `eps`, or None if not run."""
        entry = self.attacks.get(name)
        if entry is None:
            return None
        result = entry["results"].get(eps_key(eps))
        return None if result is None else result["robust_accuracy"]

    def worst_case_at(self, eps):
        """The worst-case accuracy at `eps`."""
        return self.worst_case_accuracy_by_eps[eps_key(eps)]

    def to_json(self):
        """The JSON dict: the fields in order, then `metadata`, no examples."""
        fields = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("metadata", "examples")
        }
        return jsonio.jsonable({**fields, **self.metadata})

    @classmethod
    def from_json(cls, data):
        """The `Report` of a JSON dict written by `to_json` (or `write_report`).

        Keys that are not fields go to `metadata`, but for `files` (the paths
        `write_report` added); `examples` stays None.
        """
        names = {field.name for field in dataclasses.fields(cls)} - {"metadata", "examples"}
        fields = {key: value for key, value in data.items() if key in names}
        extra = {key: value for key, value in data.items() if key not in names | {"files"}}
        return cls(**fields, metadata=extra)
