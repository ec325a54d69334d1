r"""Figures of `benchmarks/reference_autoattack.py`'s comparison, and merging its parts.

The comparison attacks chunks of images with the reference AutoAttack and with
sq_keras's `autoattack` preset; the functions here add up the chunks' figures
(per image: clean and robust; per attack: seconds, attacked images, images
still robust after it) and compare the two implementations image by image.
They need neither PyTorch nor the reference.

A comparison over more images than one session can attack runs as parts, each
on a contiguous range of one split (`--split=test[1000:1500]`, then
`--split=test[1500:2000]`, or whatever an interrupted part left undone:
`examples_done` in its JSON). This script merges the parts' JSON files into
one, as if one run had attacked the whole range in the parts' chunks:

  python benchmarks/reference_comparison.py \
      --parts='results/autoattack/reference_comparison_sq_free_readme_test_1000_*.json' \
      --output=results/autoattack/reference_comparison_sq_free_readme_test_1000_2000.json

Parts must share the model, eps, seed and both attack lists, and must cover
adjacent ranges without overlap.
"""

import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import jsonio  # noqa: E402

IMPLEMENTATIONS = ("reference", "ours")
# What parts of one comparison share.
_SAME = ("eps", "seed", "reference_attacks", "our_attacks", "our_settings")


class MergeError(ValueError):
    """Parts that do not make one comparison."""


# ---------------------------------------------------------------------------
# Chunks and totals.


def chunk_figures(clean_correct, robust, rows, seconds, names):
    """The figures of one chunk, per attack in cascade order.

    Args:
        clean_correct, robust: bool `[n]`, per image.
        rows: Dict attack -> {"seconds", "attacked", "broken"}; an attack
            missing from it ran on no image.
        seconds: The chunk's wall seconds.
        names: The attacks in cascade order.
    """
    left = int(np.sum(clean_correct))
    attacks = {}
    for name in names:
        row = rows.get(name, {"seconds": 0.0, "attacked": 0, "broken": 0})
        left -= row["broken"]
        attacks[name] = {
            "seconds": row["seconds"],
            "attacked_examples": row["attacked"],
            "robust_after": left,
        }
    if left != int(np.sum(robust)):
        raise RuntimeError(
            f"Robust count {int(np.sum(robust))} differs from the per-attack {left}."
        )
    return {
        "seconds": seconds,
        "clean_correct": clean_correct,
        "robust": robust,
        "attacks": attacks,
    }


def merge(total, chunk, offset):
    """Adds a chunk's figures to the running `total` (dict, updated)."""
    total["seconds"] = total.get("seconds", 0.0) + chunk["seconds"]
    for key in ("clean_correct", "robust"):
        total[key] = np.concatenate([total.get(key, np.zeros(0, bool)), chunk[key]])
    attacks = total.setdefault("attacks", {})
    for name, row in chunk["attacks"].items():
        merged = attacks.setdefault(
            name, {"seconds": 0.0, "attacked_examples": 0, "robust_after": 0}
        )
        for key in merged:
            merged[key] += row[key]
    total.setdefault("chunks", []).append(
        {"first_example": offset, "seconds": round(chunk["seconds"], 3)}
    )
    return total


def summary(total):
    """A finished or partial total as the JSON's per-implementation entry."""
    n = len(total["robust"])
    return {
        "seconds": round(total["seconds"], 3),
        "attack_seconds": round(sum(r["seconds"] for r in total["attacks"].values()), 3),
        "clean_accuracy": round(100.0 * np.mean(total["clean_correct"]), 4),
        "worst_case_accuracy": round(100.0 * np.mean(total["robust"]), 4),
        "attacks": {
            name: {
                "robust_accuracy_after": round(100.0 * row["robust_after"] / n, 4),
                "seconds": round(row["seconds"], 3),
                "attacked_examples": row["attacked_examples"],
            }
            for name, row in total["attacks"].items()
        },
        "chunks": total["chunks"],
    }


def agreement(reference, ours):
    """Per-image comparison of the two worst cases (indices within the split)."""
    ref, own = reference["robust"], ours["robust"]
    return {
        "robust_under_both": int(np.sum(ref & own)),
        "robust_under_reference_only": [int(i) for i in np.flatnonzero(ref & ~own)],
        "robust_under_ours_only": [int(i) for i in np.flatnonzero(own & ~ref)],
        "clean_disagreements": [
            int(i) for i in np.flatnonzero(reference["clean_correct"] != ours["clean_correct"])
        ],
        "worst_case_of_both": round(100.0 * np.mean(ref & own), 4),
        # Every robust image, so that other evaluations of the same images can be compared.
        "robust_examples": {
            "reference": [int(i) for i in np.flatnonzero(ref)],
            "ours": [int(i) for i in np.flatnonzero(own)],
        },
    }


def speed_ratios(ref, own):
    """`{speed_ratio_reference_over_ours, attack_speed_ratio_reference_over_ours}`."""
    return {
        "speed_ratio_reference_over_ours": round(ref["seconds"] / own["seconds"], 3),
        "attack_speed_ratio_reference_over_ours": round(
            ref["attack_seconds"] / own["attack_seconds"], 3
        ),
    }


# ---------------------------------------------------------------------------
# Parts of one comparison.


def model_of(payload):
    """The attacked model: the payload's `model`, else `--model` of its command."""
    if payload.get("model"):
        return payload["model"]
    match = re.search(r"--model[= ](\S+)", payload.get("command", ""))
    return match.group(1) if match else "runs/mnist_sq_free"  # the script's default


def part_range(payload, name):
    """`(base split, first image, images done)` of a part."""
    base, start, stop = data.split_slice(payload.get("split", "test"))
    if (start or 0) < 0 or (stop is not None and stop < 0):
        raise MergeError(f"{name}: merge parts sliced from the start, not the end.")
    return base, start or 0, payload["examples_done"]


def merge_payloads(parts):
    """One comparison's payload from its parts' payloads.

    Args:
        parts: Dict name (e.g. the file) -> payload as the script writes it.

    Returns:
        The merged payload: counts and seconds added, percentages over all
        images, per-image lists as indices within the merged range, `parts`
        naming each part.

    Raises:
        MergeError: Parts of different models, eps, seeds or attacks, of
            different splits, overlapping, or leaving a gap.
    """
    if not parts:
        raise MergeError("No parts to merge.")
    ranged = sorted(
        ((part_range(p, name), name, p) for name, p in parts.items()), key=lambda t: t[0][1]
    )
    _check_same(ranged)
    _check_adjacent(ranged)
    (base, first, _), _, head = ranged[0]
    total = sum(done for (_, _, done), _, _ in ranged)
    merged = {
        "command": [p["command"] for _, _, p in ranged],
        "model": model_of(head),
        # Earlier parts stopped short are covered by the next (no gaps), so
        # the whole is complete when the last part attacked all of its split.
        "complete": ranged[-1][2]["complete"],
        "split": f"{base}[{first}:{first + total}]",
        "num_examples": total,
        "examples_done": total,
        **{key: head[key] for key in _SAME},
    }
    for side in IMPLEMENTATIONS:
        pieces = [(start - first, done, p[side]) for (_, start, done), _, p in ranged]
        merged[side] = _merge_side(pieces)
    merged.update(speed_ratios(merged["reference"], merged["ours"]))
    merged["agreement"] = _merge_agreement(
        [(start - first, done, p["agreement"]) for (_, start, done), _, p in ranged], total
    )
    merged["parts"] = [_part_record(name, p) for _, name, p in ranged]
    return merged


def _check_same(ranged):
    (_, _, _), first_name, head = ranged[0]
    for (base, _, _), name, payload in ranged[1:]:
        if base != ranged[0][0][0]:
            raise MergeError(f"{name} attacks split {base!r}, {first_name} {ranged[0][0][0]!r}.")
        if model_of(payload) != model_of(head):
            raise MergeError(f"{name} attacks {model_of(payload)}, {first_name} {model_of(head)}.")
        for key in _SAME:
            if payload[key] != head[key]:
                raise MergeError(
                    f"{name} has {key}={payload[key]!r}, {first_name} {head[key]!r}: "
                    "parts of one comparison share it."
                )


def _check_adjacent(ranged):
    for ((_, start, done), name, _), ((_, after, _), next_name, _) in zip(ranged, ranged[1:]):
        stop = start + done
        if after < stop:
            raise MergeError(f"{name} and {next_name} overlap: images {after}-{stop - 1}.")
        if after > stop:
            raise MergeError(
                f"{name} ends at image {stop} and {next_name} starts at {after}: "
                f"attack --split=<split>[{stop}:{after}] too and merge it."
            )


def _count(percent, n):
    return int(round(percent * n / 100.0))


def _merge_side(pieces):
    """One implementation's entry from `(offset, images, entry)` per part."""
    total = sum(n for _, n, _ in pieces)
    clean = sum(_count(e["clean_accuracy"], n) for _, n, e in pieces)
    robust = sum(_count(e["worst_case_accuracy"], n) for _, n, e in pieces)
    attacks = {}
    for _, n, entry in pieces:
        for name, row in entry["attacks"].items():
            merged = attacks.setdefault(name, {"robust": 0, "seconds": 0.0, "attacked": 0})
            merged["robust"] += _count(row["robust_accuracy_after"], n)
            merged["seconds"] += row["seconds"]
            merged["attacked"] += row["attacked_examples"]
    return {
        "seconds": round(sum(e["seconds"] for _, _, e in pieces), 3),
        "attack_seconds": round(sum(e["attack_seconds"] for _, _, e in pieces), 3),
        "clean_accuracy": round(100.0 * clean / total, 4),
        "worst_case_accuracy": round(100.0 * robust / total, 4),
        "attacks": {
            name: {
                "robust_accuracy_after": round(100.0 * row["robust"] / total, 4),
                "seconds": round(row["seconds"], 3),
                "attacked_examples": row["attacked"],
            }
            for name, row in attacks.items()
        },
        "chunks": [
            {**chunk, "first_example": chunk["first_example"] + offset}
            for offset, _, entry in pieces
            for chunk in entry["chunks"]
        ],
    }


def _merge_agreement(pieces, total):
    lists = ("robust_under_reference_only", "robust_under_ours_only", "clean_disagreements")
    both = sum(a["robust_under_both"] for _, _, a in pieces)
    merged = {
        "robust_under_both": both,
        **{key: [i + offset for offset, _, a in pieces for i in a[key]] for key in lists},
        "worst_case_of_both": round(100.0 * both / total, 4),
    }
    if all("robust_examples" in a for _, _, a in pieces):  # parts from before it was kept lack it
        merged["robust_examples"] = {
            side: [i + offset for offset, _, a in pieces for i in a["robust_examples"][side]]
            for side in IMPLEMENTATIONS
        }
    return merged


def _part_record(name, payload):
    keys = ("split", "examples_done", "complete", "commit", "date", "load_average")
    return {
        "file": name,
        **{key: payload.get(key) for key in keys},
        "environment": payload.get("environment"),
    }


# ---------------------------------------------------------------------------
# The merge command.


def merge_files(patterns, output):
    """Merges the parts matching `patterns` (the output itself left out) into `output`.

    Returns:
        `(merged payload, the parts' paths)`.

    Raises:
        MergeError: No part matches, or the parts do not make one comparison.
    """
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    paths = [p for p in paths if os.path.abspath(p) != os.path.abspath(output)]
    if not paths:
        raise MergeError(f"No file matches {', '.join(patterns)}.")
    merged = merge_payloads({path: jsonio.read_json(path) for path in paths})
    jsonio.write_json(output, merged)
    return merged, paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    parts, output = flags.FLAGS.parts, flags.FLAGS.output
    if not parts or not output:
        raise app.UsageError("Give --parts and --output.")
    try:
        merged, paths = merge_files(parts, output)
    except MergeError as error:
        raise app.UsageError(str(error)) from None
    ref, own = merged["reference"], merged["ours"]
    print(
        f"{merged['split']}: {len(paths)} parts, clean {ref['clean_accuracy']}%, worst case "
        f"reference {ref['worst_case_accuracy']}%, ours {own['worst_case_accuracy']}%, both "
        f"{merged['agreement']['worst_case_of_both']}%. Written: {output}"
    )


if __name__ == "__main__":
    # Defined here: `reference_autoattack` imports this module and has flags of its own.
    flags.DEFINE_list("parts", None, "JSON files or glob patterns of one comparison's parts.")
    flags.DEFINE_string("output", None, "The merged JSON file.")
    app.run(main)
