"""The training methods: what each one changes in the shared training run.

A method names three things: whether the model has a `SoftQuantization`
front, whether the data pipeline adds noise, and which train step runs
(a key of `sq_keras.training.steps.STEP_BUILDERS`); a step that keeps
per-example state also gets each example's index. Adding a method is one
entry in `METHODS`.

```python
METHODS["sq_fgsm"]   # Method(quantizer=True, noise=False, step="fgsm_rs", ...)
```
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    """How one training method differs from the others.

    Attributes:
        quantizer: Whether the model gets a `SoftQuantization` front.
        noise: Whether the noise stage perturbs training batches.
        step: Key of `STEP_BUILDERS`.
        description: One line for help texts.
        indexed: Whether the step takes each example's index in the training
            set (`step(images, labels, indices)`), to keep per-example state.
    """

    quantizer: bool
    noise: bool
    step: str
    description: str
    indexed: bool = False


METHODS = {
    "sq_noisy": Method(True, True, "standard", "soft quantization + noisy samples"),
    "sq_natural": Method(True, False, "standard", "soft quantization, clean samples"),
    "noisy": Method(False, True, "standard", "noisy samples, no quantizer"),
    "natural": Method(False, False, "standard", "clean samples, no quantizer"),
    "pgd_at": Method(False, False, "pgd", "PGD adversarial training (Madry et al.)"),
    "fgsm_rs": Method(False, False, "fgsm_rs", "FGSM from a random start (Wong et al.)"),
    "gradnorm": Method(False, False, "gradnorm", "loss + eps * ||grad_x loss||_1 penalty"),
    "sq_fgsm": Method(
        True, False, "fgsm_rs", "soft quantization + FGSM-RS through its BPDA stand-in"
    ),
    "free": Method(
        False,
        False,
        "free",
        "free adversarial training: per-example perturbations kept across epochs",
        indexed=True,
    ),
    "sq_free": Method(
        True,
        False,
        "free",
        "soft quantization + free adversarial training through its BPDA stand-in",
        indexed=True,
    ),
}


def takes_indices(config):
    """Whether `config`'s step takes each example's index: an indexed method with a memory.

    `free` / `sq_free` with `free_memory="none"` keep no per-example state.
    """
    return METHODS[config.method].indexed and config.free_memory == "example"
