"""Transfer attacks: craft on a surrogate model, score on the target."""

from sq_keras.attacks.pgd import pgd


def transfer(source_fn, x, y, *, attack=None, **attack_kwargs):
    """Crafts adversarial examples on a source (surrogate) model.

    Papernot, McDaniel and Goodfellow 2016, "Transferability in Machine
    Learning". Score the result on the target model, which is never queried
    here: `accuracy(target_fn, transfer(source_fn, x, y, eps=...), y)`.

    Args:
        source_fn: Callable mapping images to logits of the surrogate model.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        attack: A gradient attack of this package; `pgd` if None.
        **attack_kwargs: Keyword hyper-parameters of `attack`.

    Returns:
        Adversarial images, gradient stopped.
    """
    attack = pgd if attack is None else attack
    return attack(source_fn, x, y, **attack_kwargs)
