"""Robustness evaluation: an attack suite, a report and gradient-masking checks.

```python
from sq_keras import evaluation

target = evaluation.load_target("runs/mnist_sq_noisy")      # model_dir, .keras or SavedModel
images, labels = evaluation.load_examples("mnist", "test", num_examples=500)
report = evaluation.evaluate(
    target, images, labels,
    attacks=evaluation.resolve_attacks(["strong"]),
    eps_values=[0.3],                     # LARGE_EPS (0.5) is appended for the sweep
    settings=evaluation.AttackSettings(pgd_steps=100, restarts=5),
    source=evaluation.load_target("runs/mnist_natural"),    # for "transfer"
)
report.metadata["split"] = "test"         # extra top-level keys of the JSON file
evaluation.write_report(report, "runs/mnist_sq_noisy/evaluation.json")
print(evaluation.format_table(report))
report.worst_case_accuracy, report.attacks["pgd"]["results"][evaluation.eps_key(0.3)]

# AutoAttack's cascade (through BPDA on a quantized model), resumable: every
# finished batch lands in results/x_batches/ and a rerun skips it.
plan = evaluation.REGISTRY.plan(["autoattack"], evaluation.AttackSettings(), target=target)
report = evaluation.evaluate(
    target, images, labels, attacks=plan.attacks, eps_values=[0.3],
    settings=plan.settings, worst_case_only=plan.worst_case_only,
    store=evaluation.BatchStore(evaluation.batches_dir("results/x.json")),
)
```

The package reads as the pipeline: `target` (loading models and examples),
`registry` (the attacks: one `AttackSpec` per attack; names, presets, attack
sets and skip reasons derive from it), `attack_runner` (one attack at one eps
over batches), `batch_store` (finished batches on disk), `suite`
(`evaluate`), `report` (the typed `Report`), `checks` (the masking checks),
`writers` (JSON, table, figures, TensorBoard), `merge` (the reports of
shards of one long evaluation as one report) and `combine` (the worst case
per image over separate evaluations of the same images).

Accuracies in the report are percentages of the evaluated examples. An example
counts as robust to an attack only if it is classified correctly both clean
and after the attack; it counts towards `worst_case_accuracy` only if every
attack run at that eps failed on it. In a cascade (`worst_case_only`) each
attack's accuracy is the share still robust after it and every earlier one.

Masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
section 5 and appendix checklist), each `passed` True/False or None when it
could not be run:

* `accuracy_decreases_with_eps`: every attack and the worst case are
  non-increasing along the eps sweep (within `SLACK` points).
* `chance_at_large_eps`: at the largest eps the worst case is at or below
  chance (100 / num_classes). At eps = 0.5 every image in [0, 1] can be moved
  to the constant grey image 0.5, so no classifier can stay above chance
  there; an attack that leaves it higher is failing, not the model robust.
* `iterative_beats_single_step`: PGD/APGD never leave more than `SLACK`
  points more accuracy than FGSM.
* `pgd_steps_converged`: doubling the PGD steps moves accuracy by < 1 point.
* `gradient_free_not_stronger`: Square does not beat the best plain
  white-box attack by more than 1 point.
* `transfer_not_stronger`: the transfer attack does not beat it either.
* `bpda_run`: a BPDA attack ran whenever the model holds a quantizer.
* `plain_gradients_not_masked`: BPDA does not beat plain gradient attacks by
  more than 1 point.
* `zero_gradients`: under 1% of examples have an all-zero input gradient of
  the margin loss (the margin does not saturate like the cross-entropy).
"""

from sq_keras.evaluation.attack_runner import AttackOutcome
from sq_keras.evaluation.attack_runner import run_attack
from sq_keras.evaluation.attack_runner import zero_gradient_shares
from sq_keras.evaluation.batch_store import BatchStore
from sq_keras.evaluation.batch_store import StoreMismatch
from sq_keras.evaluation.batch_store import batches_dir
from sq_keras.evaluation.batch_store import file_digest
from sq_keras.evaluation.batch_store import file_safe
from sq_keras.evaluation.batch_store import model_run
from sq_keras.evaluation.checks import SLACK
from sq_keras.evaluation.checks import failed_checks
from sq_keras.evaluation.checks import masking_checks
from sq_keras.evaluation.combine import combine_report_files
from sq_keras.evaluation.combine import combine_reports
from sq_keras.evaluation.combine import write_combined
from sq_keras.evaluation.merge import MergeError
from sq_keras.evaluation.merge import merge_report_files
from sq_keras.evaluation.merge import merge_reports
from sq_keras.evaluation.merge import read_report
from sq_keras.evaluation.registry import ATTACKS
from sq_keras.evaluation.registry import BPDA_ATTACKS
from sq_keras.evaluation.registry import DOUBLED
from sq_keras.evaluation.registry import ITERATIVE_ATTACKS
from sq_keras.evaluation.registry import PLAIN_GRADIENT_ATTACKS
from sq_keras.evaluation.registry import PRESETS
from sq_keras.evaluation.registry import REGISTRY
from sq_keras.evaluation.registry import TRANSFER_ATTACKS
from sq_keras.evaluation.registry import AttackPlan
from sq_keras.evaluation.registry import AttackSettings
from sq_keras.evaluation.registry import AttackSpec
from sq_keras.evaluation.registry import Preset
from sq_keras.evaluation.registry import Registry
from sq_keras.evaluation.registry import attack_settings
from sq_keras.evaluation.registry import bpda_name
from sq_keras.evaluation.registry import resolve_attacks
from sq_keras.evaluation.report import Report
from sq_keras.evaluation.report import eps_key
from sq_keras.evaluation.report import percent
from sq_keras.evaluation.suite import LARGE_EPS
from sq_keras.evaluation.suite import evaluate
from sq_keras.evaluation.suite import sweep_eps
from sq_keras.evaluation.target import Target
from sq_keras.evaluation.target import load_examples
from sq_keras.evaluation.target import load_target
from sq_keras.evaluation.target import to_policy
from sq_keras.evaluation.writers import format_table
from sq_keras.evaluation.writers import plot_examples
from sq_keras.evaluation.writers import plot_sweep
from sq_keras.evaluation.writers import write_report
from sq_keras.evaluation.writers import write_tensorboard

__all__ = [
    "ATTACKS",
    "BPDA_ATTACKS",
    "DOUBLED",
    "ITERATIVE_ATTACKS",
    "LARGE_EPS",
    "PLAIN_GRADIENT_ATTACKS",
    "PRESETS",
    "REGISTRY",
    "SLACK",
    "TRANSFER_ATTACKS",
    "AttackOutcome",
    "AttackPlan",
    "AttackSettings",
    "AttackSpec",
    "BatchStore",
    "MergeError",
    "Preset",
    "Registry",
    "Report",
    "StoreMismatch",
    "Target",
    "attack_settings",
    "batches_dir",
    "bpda_name",
    "combine_report_files",
    "combine_reports",
    "file_digest",
    "file_safe",
    "model_run",
    "eps_key",
    "evaluate",
    "failed_checks",
    "format_table",
    "load_examples",
    "load_target",
    "masking_checks",
    "merge_report_files",
    "merge_reports",
    "percent",
    "plot_examples",
    "plot_sweep",
    "read_report",
    "resolve_attacks",
    "run_attack",
    "sweep_eps",
    "to_policy",
    "write_combined",
    "write_report",
    "write_tensorboard",
    "zero_gradient_shares",
]
