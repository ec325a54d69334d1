"""Presets that choose their members per model and bring setting defaults.

Besides the presets the entries name in their `presets` field (`fast`), a
`Preset` may run its gradient members through a BPDA stand-in on a model with
a quantizer, include other presets, set defaults of `AttackSettings` and run
as a cascade. `sq_keras.evaluation.registry` resolves them:

```python
REGISTRY.plan(["autoattack"], AttackSettings(), target=target).attacks
# ["bpda_identity:apgd_ce", "bpda_identity:apgd_t", "bpda_identity:fab_t", "square"]
```
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    """A preset beyond the entries' `presets` memberships.

    Attributes:
        name: Name in `--attacks`.
        members: Plain entry names, in suite order.
        stand_in: On a model with a quantizer, the gradient members run
            through this BPDA stand-in instead (None: always plain).
        defaults: `(field, value)` pairs of `AttackSettings` this preset
            runs with unless the caller sets the field explicitly.
        worst_case_only: Always run as a cascade.
        description: One line for the `--attacks` help.
        includes: Names of presets whose members (resolved as that preset
            resolves them, BPDA versions included) join this one. The
            entries whose `presets` name this preset join it too.
    """

    name: str
    members: tuple
    stand_in: str = None
    defaults: tuple = ()
    worst_case_only: bool = False
    description: str = ""
    includes: tuple = ()


# Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an
# ensemble of diverse parameter-free attacks", section 5: APGD-CE (100
# iterations, 1 restart), APGD-T, FAB-T, Square (5000 queries, p_init 0.8),
# each run only on the examples the earlier ones failed on.
AUTOATTACK = Preset(
    "autoattack",
    members=(
        "apgd_ce",
        "apgd_t",
        "fab_t",
        "square",
    ),
    stand_in="identity",
    defaults=(("pgd_steps", 100), ("square_queries", 5000), ("square_p_init", 0.8)),
    worst_case_only=True,
    description="AutoAttack's cascade, through BPDA on a quantized model",
)

# Every attack on every image, so that the masking checks can compare them:
# AutoAttack's four (through BPDA on a quantized model), PGD-CE/CW with
# restarts, FGSM, APGD-CE/DLR and BPDA-PGD on the model's own gradients or
# stand-ins, and transfer from a source model. Its members are the
# autoattack preset's plus the entries that name "strong" in `presets`.
STRONG = Preset(
    "strong",
    members=(),
    defaults=(
        ("pgd_steps", 100),
        ("restarts", 5),
        ("square_queries", 5000),
        ("square_p_init", 0.8),
    ),
    description="autoattack + PGD restarts, plain gradients, BPDA-PGD and transfer, per attack",
    includes=("autoattack",),
)

PRESET_TABLE = (AUTOATTACK, STRONG)
