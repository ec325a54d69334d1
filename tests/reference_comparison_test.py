"""Merging parts of the reference AutoAttack comparison (`benchmarks/reference_comparison.py`)."""

import os

import numpy as np
from absl.testing import absltest

from benchmarks import reference_comparison as rc
from sq_keras import jsonio

REFERENCE = ("apgd-ce", "apgd-t", "fab-t", "square")
OURS = ("bpda_identity:apgd_ce", "bpda_identity:apgd_t", "bpda_identity:fab_t", "square")


def _outcomes(n, seed):
    """Per image: clean, robust under each implementation, and the attack that broke it."""
    rng = np.random.default_rng(seed)
    clean = rng.random(n) < 0.9
    outcomes = {}
    for side, names in (("reference", REFERENCE), ("ours", OURS)):
        broken_by = np.where(clean & (rng.random(n) < 0.3), rng.integers(0, 4, n), -1)
        outcomes[side] = (clean.copy(), broken_by, names)
    return outcomes


def _chunk(clean, broken_by, names, seconds):
    rows = {
        name: {
            "seconds": seconds * (k + 1),
            "attacked": int(np.sum(clean & ((broken_by < 0) | (broken_by >= k)))),
            "broken": int(np.sum(broken_by == k)),
        }
        for k, name in enumerate(names)
    }
    robust = clean & (broken_by < 0)
    return rc.chunk_figures(clean, robust, rows, 10.0 * seconds, names)


def _run(outcomes, start, stop, chunk_size, split):
    """The payload one run of the comparison writes for images [start, stop)."""
    totals = {side: {} for side in rc.IMPLEMENTATIONS}
    for first in range(start, stop, chunk_size):
        last = min(first + chunk_size, stop)
        for side, (clean, broken_by, names) in outcomes.items():
            chunk = _chunk(clean[first:last], broken_by[first:last], names, 0.5 + first)
            rc.merge(totals[side], chunk, first - start)
    ref, own = rc.summary(totals["reference"]), rc.summary(totals["ours"])
    return {
        "command": f"python benchmarks/reference_autoattack.py --model=runs/m --split={split}",
        "complete": True,
        "split": split,
        "num_examples": stop - start,
        "examples_done": stop - start,
        "eps": 0.3,
        "seed": 0,
        "reference_attacks": list(REFERENCE),
        "our_attacks": list(OURS),
        "our_settings": {"pgd_steps": 100},
        "reference": ref,
        "ours": own,
        **rc.speed_ratios(ref, own),
        "agreement": rc.agreement(totals["reference"], totals["ours"]),
    }


class MergeTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.outcomes = _outcomes(90, seed=3)
        self.whole = _run(self.outcomes, 0, 90, 10, "test[1000:1090]")
        self.parts = {
            "a.json": _run(self.outcomes, 0, 40, 10, "test[1000:1040]"),
            "b.json": _run(self.outcomes, 40, 90, 10, "test[1040:1090]"),
        }

    def test_parts_merge_into_the_one_run_payload(self):
        merged = rc.merge_payloads(self.parts)
        self.assertEqual(merged["split"], "test[1000:1090]")
        self.assertEqual(merged["examples_done"], 90)
        for key in ("reference", "ours", "agreement", "eps", "seed", "our_settings"):
            with self.subTest(key):
                self.assertEqual(merged[key], self.whole[key])
        for key in ("speed_ratio_reference_over_ours", "attack_speed_ratio_reference_over_ours"):
            self.assertAlmostEqual(merged[key], self.whole[key], places=3)
        self.assertEqual([p["file"] for p in merged["parts"]], ["a.json", "b.json"])
        # The comparison has disagreements for the merge to move: a test that could fail.
        disagreements = self.whole["agreement"]["robust_under_ours_only"]
        self.assertTrue(any(i >= 40 for i in disagreements))
        robust = merged["agreement"]["robust_examples"]
        self.assertLen(robust["reference"], round(merged["reference"]["worst_case_accuracy"] * 0.9))
        # A part written before every robust image was kept: the merge leaves the lists out.
        old = {**self.parts["a.json"], "agreement": dict(self.parts["a.json"]["agreement"])}
        del old["agreement"]["robust_examples"]
        merged = rc.merge_payloads({**self.parts, "a.json": old})
        self.assertNotIn("robust_examples", merged["agreement"])
        self.assertEqual(merged["reference"], self.whole["reference"])

    def test_part_order_does_not_matter_and_a_partial_part_counts_what_it_did(self):
        partial = _run(self.outcomes, 40, 70, 10, "test[1040:1090]")  # interrupted at 30 of 50
        partial["complete"] = False
        rest = _run(self.outcomes, 70, 90, 10, "test[1070:1090]")
        parts = {"c.json": rest, "b.json": partial, "a.json": self.parts["a.json"]}
        merged = rc.merge_payloads(parts)
        self.assertEqual(merged["reference"], self.whole["reference"])
        self.assertEqual(merged["agreement"], self.whole["agreement"])
        self.assertTrue(merged["complete"])  # The rest covers what the partial part left.
        last = {**rest, "complete": False}  # The last part stopped short: so did the whole.
        self.assertFalse(rc.merge_payloads({**parts, "c.json": last})["complete"])

    def test_refuses_parts_that_are_not_one_comparison(self):
        a, b = self.parts["a.json"], self.parts["b.json"]
        gap = _run(self.outcomes, 50, 90, 10, "test[1050:1090]")
        with self.assertRaisesRegex(rc.MergeError, r"ends at image 1040.*starts at 1050"):
            rc.merge_payloads({"a": a, "gap": gap})
        overlap = _run(self.outcomes, 30, 90, 10, "test[1030:1090]")
        with self.assertRaisesRegex(rc.MergeError, "overlap"):
            rc.merge_payloads({"a": a, "overlap": overlap})
        with self.assertRaisesRegex(rc.MergeError, "eps=0.25"):
            rc.merge_payloads({"a": a, "b": {**b, "eps": 0.25}})
        other = {**b, "command": b["command"].replace("runs/m", "runs/other")}
        with self.assertRaisesRegex(rc.MergeError, "runs/other"):
            rc.merge_payloads({"a": a, "b": other})
        with self.assertRaisesRegex(rc.MergeError, "train"):
            rc.merge_payloads({"a": a, "b": {**b, "split": "train[1040:1090]"}})

    def test_merge_files_reads_the_parts_and_leaves_out_its_output(self):
        directory = self.create_tempdir().full_path
        for name, payload in self.parts.items():
            jsonio.write_json(os.path.join(directory, f"part_{name}"), payload)
        output = os.path.join(directory, "part_all.json")
        merged, paths = rc.merge_files([os.path.join(directory, "part_*.json")], output)
        self.assertLen(paths, 2)
        self.assertEqual(jsonio.read_json(output)["agreement"], self.whole["agreement"])
        _, again = rc.merge_files([os.path.join(directory, "part_*.json")], output)
        self.assertEqual(again, paths)
        with self.assertRaisesRegex(rc.MergeError, "No file"):
            rc.merge_files([os.path.join(directory, "none_*.json")], output)


if __name__ == "__main__":
    absltest.main()
