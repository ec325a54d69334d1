"""l-inf adversarial attacks on pixel-space classifiers.

Every attack is a pure function of a `model_fn` that maps images in [0, 1]
(float32, channels last) to logits, the clean images `x` and their true labels
`y`. Hyper-parameters are keyword-only. The result is `tf.stop_gradient`-ed and
always lies inside the l-inf ball of radius `eps` around `x` and inside
`[clip_min, clip_max]`. `eps` is in pixel units of the [0, 1] range (MNIST's
standard 0.3 is 76.5 grey levels out of 255).

```python
import tensorflow as tf
from sq_keras import attacks

model_fn = lambda images: model(images, training=False)   # a keras.Model

x_adv = attacks.fgsm(model_fn, x, y, eps=0.3)
x_adv = attacks.pgd(model_fn, x, y, eps=0.3, step_size=0.01, num_steps=100,
                    restarts=5, loss="margin", seed=0)
x_adv = attacks.apgd(model_fn, x, y, eps=0.3, num_steps=100, loss="dlr")
# AutoAttack's targeted attacks: one run per wrong class of the 9 largest
# clean logits, on the examples no earlier run has fooled.
x_adv = attacks.apgd_targeted(model_fn, x, y, eps=0.3, num_steps=100)
x_adv, norms = attacks.fab_targeted(model_fn, x, y, eps=0.3, return_norms=True)
x_adv, queries = attacks.square(model_fn, x, y, eps=0.3, max_queries=5000)

# Craft on a surrogate (e.g. a naturally trained model), score on the target.
x_adv = attacks.transfer(surrogate_fn, x, y, eps=0.3, step_size=0.01,
                         num_steps=100)

# BPDA: forward pass through the real defence, backward pass through a
# stand-in of every SoftQuantization layer; then any gradient attack applies.
x_adv = attacks.pgd(attacks.bpda(model, stand_in="identity"), x, y,
                    eps=0.3, step_size=0.01, num_steps=100)

accuracy = attacks.accuracy(model_fn, x_adv, y)
```

All attacks work eagerly and inside `tf.function` (wrap the call, not the
model: `tf.function(lambda x, y: attacks.pgd(model_fn, x, y, ...))`); loops are
written so that AutoGraph turns them into `tf.while_loop`s. Randomness is
stateless and derived from the integer `seed`, so a call is reproducible.

Gradient attacks keep, per example, the most damaging iterate they visited
(a misclassified one if any, else the one with the highest loss), over all
steps and restarts. Hence, with a fixed `seed`, more steps or more restarts can
never raise the robust accuracy they report. FAB, a minimal-norm attack,
returns the smallest misclassified point it found within eps, else `x`.

Modules: `losses` (ce, margin, dlr, targeted dlr, `loss_gradient`), `linf` (projection,
argument checks, seeds, the shared step and most-damaging bookkeeping),
`pgd` (FGSM, PGD), `apgd`, `fab` (FAB, FAB-T), `square`, `transfer`, `bpda` and
`fast_input_gradients` (`input_gradient_model`).
"""

from sq_keras.attacks.apgd import apgd
from sq_keras.attacks.apgd import apgd_checkpoints
from sq_keras.attacks.apgd import apgd_targeted
from sq_keras.attacks.bpda import STAND_INS
from sq_keras.attacks.bpda import bpda
from sq_keras.attacks.bpda import has_quantizer
from sq_keras.attacks.fab import fab
from sq_keras.attacks.fab import fab_targeted
from sq_keras.attacks.fast_input_gradients import input_gradient_model
from sq_keras.attacks.linf import accuracy
from sq_keras.attacks.linf import clip_to_bounds
from sq_keras.attacks.linf import predictions
from sq_keras.attacks.linf import project_linf
from sq_keras.attacks.losses import LOSSES
from sq_keras.attacks.losses import TARGETED_LOSSES
from sq_keras.attacks.losses import cross_entropy_loss
from sq_keras.attacks.losses import dlr_loss
from sq_keras.attacks.losses import dlr_targeted_loss
from sq_keras.attacks.losses import loss_gradient
from sq_keras.attacks.losses import margin_loss
from sq_keras.attacks.losses import targeted_loss
from sq_keras.attacks.pgd import fgsm
from sq_keras.attacks.pgd import pgd
from sq_keras.attacks.square import square
from sq_keras.attacks.square import square_fraction
from sq_keras.attacks.transfer import transfer

__all__ = [
    "LOSSES",
    "STAND_INS",
    "TARGETED_LOSSES",
    "accuracy",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "bpda",
    "clip_to_bounds",
    "cross_entropy_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "fab",
    "fab_targeted",
    "fgsm",
    "has_quantizer",
    "input_gradient_model",
    "loss_gradient",
    "margin_loss",
    "pgd",
    "predictions",
    "project_linf",
    "square",
    "square_fraction",
    "targeted_loss",
    "transfer",
]
