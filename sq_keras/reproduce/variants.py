"""The variants of the comparison: what is trained, and which one is the reference.

A `Variant` is a training method of `sq_keras.training` plus `TrainConfig`
overrides. `VARIANTS` maps a dataset to its comparison; `REFERENCE` names the
variant that sets the costs, the transfer source and the robustness curve.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the comparison.

    Attributes:
        name: Row name and run sub-directory.
        method: Key of `sq_keras.training.METHODS`.
        settings: `TrainConfig` overrides.
        note: What the row is, for the table.
        candidate: A cheap recipe competing in the held-out selection.
        baseline: A candidate the comparison reports on the test set even
            when it is not selected (the paper's recipe).
    """

    name: str
    method: str
    settings: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    candidate: bool = False
    baseline: bool = False

    def train_settings(self):
        """`TrainConfig` overrides of this row: `BASE_SETTINGS`, then `settings`."""
        return {**BASE_SETTINGS, **self.settings}


# What every row starts from, so that rows differ only by their own settings
# even where the dataset's defaults are those of the chosen recipe (MNIST's
# default learning rate is piecewise).
BASE_SETTINGS = {"lr_schedule": "constant"}


# Optimizer steps (two epochs of 50,000 images at batch 128) over which the
# adversarial-training baselines ramp eps up: at full eps from the first step
# PGD-40 training of the fresh Madry CNN stayed at chance for two epochs here.
WARMUP_STEPS = 782

MNIST_VARIANTS = (
    Variant("natural", "natural", note="clean training, no quantizer"),
    Variant("noisy", "noisy", note="uniform noise +-eps, no quantizer"),
    Variant("sq_natural", "sq_natural", note="quantizer, clean images"),
    Variant(
        "sq_noisy",
        "sq_noisy",
        note="the paper's recipe: quantizer K=1 + uniform noise +-eps",
        candidate=True,
        baseline=True,
    ),
    Variant(
        "sq_noisy_sign",
        "sq_noisy",
        {"noise": "sign"},
        "quantizer + random-sign noise",
        candidate=True,
    ),
    Variant(
        "sq_fgsm",
        "sq_fgsm",
        note="quantizer + FGSM-RS through the straight-through stand-in",
        candidate=True,
    ),
    Variant(
        "sq_fgsm_half",
        "sq_fgsm",
        {"adv_fraction": 0.5, "noise": "sign"},
        "as sq_fgsm on half of each batch, random-sign noise on the rest",
        candidate=True,
    ),
    Variant(
        "sq_fgsm_quarter",
        "sq_fgsm",
        {"adv_fraction": 0.25, "noise": "sign"},
        "as sq_fgsm on a quarter of each batch, random-sign noise on the rest",
        candidate=True,
    ),
    Variant(
        "sq_noisy_large",
        "sq_noisy",
        {"noise_scale": 0.45},
        "quantizer + uniform noise +-1.5 eps",
        candidate=True,
    ),
    # Free adversarial training: the attack from the update's own backward
    # pass, kept per example across epochs (~1.05x a natural step).
    Variant(
        "sq_free",
        "sq_free",
        {"free_step_size": 0.3},
        note="quantizer + free adversarial training, step eps per visit",
        candidate=True,
    ),
    Variant(
        "sq_free_large_step",
        "sq_free",
        {"free_step_size": 0.375},
        "as sq_free with a step of 1.25 eps per visit",
        candidate=True,
    ),
    Variant(
        "sq_free_piecewise",
        "sq_free",
        {"free_step_size": 0.3, "lr_schedule": "piecewise"},
        "as sq_free, learning rate x0.1 for the second half of the steps",
        candidate=True,
    ),
    Variant(
        "sq_fgsm_piecewise",
        "sq_fgsm",
        {"lr_schedule": "piecewise"},
        "as sq_fgsm, learning rate x0.1 for the second half of the steps",
        candidate=True,
    ),
    Variant(
        "sq_free_large_step_piecewise",
        "sq_free",
        {"free_step_size": 0.375, "lr_schedule": "piecewise"},
        "as sq_free_large_step, learning rate x0.1 for the second half of the steps "
        "(MNIST's default recipe)",
        candidate=True,
    ),
    Variant(
        "sq_free_onecycle",
        "sq_free",
        {"free_step_size": 0.3, "lr_schedule": "onecycle"},
        "as sq_free, one-cycle learning rate (Wong et al. 2020)",
        candidate=True,
    ),
    # Shafahi et al.'s free-m: m updates per minibatch, m-fold fewer epochs
    # (3 epochs of 4 replays: 12 updates per image against sq_free's 10).
    Variant(
        "sq_free_replay4",
        "sq_free",
        {"free_step_size": 0.3, "free_replays": 4, "epochs": 3, "lr_schedule": "piecewise"},
        "free-4: each minibatch 4 times in a row, 3 epochs, learning rate x0.1 for the second half",
        candidate=True,
    ),
    # Threshold placement: K = 3 thresholds kept in [0.35, 0.65], more than
    # eps from MNIST's modes 0 and 1 (with free placement the lowest learned
    # threshold settled within eps of black pixels).
    Variant(
        "sq_free_k3_margin",
        "sq_free",
        {
            "free_step_size": 0.3,
            "num_thresholds": 3,
            "threshold_margin": 0.35,
            "lr_schedule": "piecewise",
        },
        "as sq_free_piecewise with K = 3 thresholds kept in [0.35, 0.65]",
        candidate=True,
    ),
    Variant("gradnorm", "gradnorm", note="CE + eps ||grad_x CE||_1 by double backpropagation"),
    Variant(
        "fgsm_rs",
        "fgsm_rs",
        {"eps_warmup_steps": WARMUP_STEPS},
        "FGSM-RS adversarial training (Wong et al. 2020), eps ramped up over the first steps",
    ),
    Variant(
        "pgd_at",
        "pgd_at",
        {"eps_warmup_steps": WARMUP_STEPS},
        "PGD-40 adversarial training (Madry et al. 2018), eps ramped up over the first steps",
    ),
)
VARIANTS = {"mnist": MNIST_VARIANTS}
REFERENCE = "pgd_at"
# Attacks scoring the reference after every epoch: strong on a model without
# masked gradients, and far cheaper than the whole suite.
CURVE_ATTACKS = ("apgd_ce", "apgd_dlr")
