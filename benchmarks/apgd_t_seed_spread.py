r"""How often APGD-T breaks given images, over random starts: ours and the reference.

Where the `autoattack` preset and the reference AutoAttack disagree on an
image (`benchmarks/reference_autoattack.py` records them under
`agreement`), this runs one APGD-T (100 steps, 9 targets, through the
identity BPDA stand-in) on those images alone, once per seed, with both
sq_keras's `attacks.apgd_targeted` and the reference's
`APGDAttack_targeted` on the PyTorch port of the same model, and counts per
image how many seeds leave it misclassified. A gap that comes from the
random start shows up as similar break rates on both sides; a weaker
implementation as a lower rate on ours.

Needs PyTorch and the reference AutoAttack, as `reference_autoattack.py`.

Usage:
  python benchmarks/apgd_t_seed_spread.py --model=runs/mnist_sq_free \
      --indices=431,460 --seeds=20
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import reference_autoattack as reference  # noqa: E402
import torch  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from autoattack.autopgd_base import APGDAttack_targeted  # noqa: E402

from sq_keras import attacks  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import provenance  # noqa: E402

# --model, --eps, --data_dir and --output are reference_autoattack.py's flags.
_INDICES = flags.DEFINE_list("indices", ["431", "460"], "Test-set indices of the images.")
_SEEDS = flags.DEFINE_integer("seeds", 20, "Seeds 0..N-1 per implementation.")
DEFAULT_OUTPUT = "results/autoattack/apgd_t_seed_spread.json"


def _ours(target, images, labels, seed):
    model_fn = attacks.bpda(target.keras_model, stand_in="identity")
    adversarial = attacks.apgd_targeted(
        model_fn, images, labels, eps=reference._EPS.value, num_steps=100, num_targets=9, seed=seed
    )
    return np.argmax(target.model_fn(adversarial).numpy(), -1) != labels


def _reference(module, target, images, labels, seed):
    attack = APGDAttack_targeted(
        module, n_restarts=1, n_iter=100, eps=reference._EPS.value, seed=seed, device="cpu"
    )
    attack.n_target_classes = 9
    adversarial = attack.perturb(reference.to_nchw(images), torch.from_numpy(labels))
    adversarial = adversarial.detach().numpy().transpose(0, 2, 3, 1)
    # Scored on the Keras model, so both sides are judged alike.
    return np.argmax(target.model_fn(adversarial).numpy(), -1) != labels


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _SEEDS.value <= 0:
        raise app.UsageError(f"--seeds must be a positive integer. Received: {_SEEDS.value}")
    indices = [int(i) for i in _INDICES.value]
    target = evaluation.load_target(reference._MODEL.value, policy="float32")
    images, labels = evaluation.load_examples(
        "mnist", "test", num_examples=max(indices) + 1, data_dir=reference._DATA_DIR.value
    )
    images, labels = images[indices], labels[indices]
    module = reference.port_model(target.keras_model)
    broken = {"ours": np.zeros(len(indices), int), "reference": np.zeros(len(indices), int)}
    start = time.perf_counter()
    for seed in range(_SEEDS.value):
        broken["ours"] += _ours(target, images, labels, seed)
        broken["reference"] += _reference(module, target, images, labels, seed)
        print(f"seed {seed}: broken so far { ({k: v.tolist() for k, v in broken.items()}) }")
    payload = {
        "command": " ".join(["python benchmarks/apgd_t_seed_spread.py", *sys.argv[1:]]),
        "indices": indices,
        "seeds": _SEEDS.value,
        "eps": reference._EPS.value,
        "attack": "APGD-T, 100 steps, 9 targets, 1 restart, BPDA identity",
        "seeds_that_break": {
            side: dict(zip(map(str, indices), counts.tolist())) for side, counts in broken.items()
        },
        "seconds": round(time.perf_counter() - start, 1),
        "environment": provenance.environment(),
    }
    output = reference._OUTPUT.value or DEFAULT_OUTPUT
    jsonio.write_json(output, payload)
    print(payload["seeds_that_break"])
    print(f"Written: {output}")


if __name__ == "__main__":
    app.run(main)
