"""Tests of sq_keras.evaluation.merge: shard reports merged into one run's report."""

import functools

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from tests.evaluation.fixtures import range_report

SETTINGS = evaluation.AttackSettings(pgd_steps=5, restarts=1, seed=3)
# Plain FGSM and PGD, and PGD through BPDA: the "soft" model has a quantizer.
ATTACKS = ("fgsm", "pgd", "bpda_identity")
# Every attack batch starts its random starts from the same seed, so an
# example's result depends on its place in its batch. With 20 examples per
# batch and shard bounds at multiples of 20, each shard's batches are exactly
# batches of the single run, and the merge must reproduce it bit for bit.
BATCH_SIZE = 20
NUM_EXAMPLES = 80
SHARDS = ((0, 20), (20, 60), (60, 80))  # Unequal sizes: averaging percentages would be wrong.
MODEL_SHA256 = "5" * 64


def _evaluate(start, stop, attacks=ATTACKS, worst_case_only=False):
    """The report of one run over test[start:stop], with what apps.evaluate records."""
    return range_report(
        start,
        stop,
        attacks,
        settings=SETTINGS,
        model_sha256=MODEL_SHA256,
        num_examples=NUM_EXAMPLES,
        batch_size=BATCH_SIZE,
        worst_case_only=worst_case_only,
    )


@functools.lru_cache(maxsize=None)
def single_and_shards(attacks=ATTACKS, worst_case_only=False):
    """JSON dicts of one run over all the examples and of its shards."""
    single = _evaluate(0, NUM_EXAMPLES, attacks, worst_case_only).to_json()
    shards = [_evaluate(a, b, attacks, worst_case_only).to_json() for a, b in SHARDS]
    return single, shards


def shard_reports():
    """Fresh `Report`s of the per-attack shards, read back from their JSON."""
    _, shards = single_and_shards()
    return [evaluation.Report.from_json(shard) for shard in shards]


def merge(reports):
    names = [f"shard{i}.json" for i in range(len(reports))]
    return evaluation.merge_reports(reports, names=names)


class MergeEqualsOneRunTest(parameterized.TestCase):
    def assert_same_numbers(self, merged, single):
        self.assertEqual(merged.num_examples, single["num_examples"])
        self.assertEqual(merged.clean_accuracy, single["clean_accuracy"])
        self.assertEqual(list(merged.attacks), list(single["attacks"]))
        for name, entry in single["attacks"].items():
            self.assertEqual(merged.attacks[name]["settings"], entry["settings"], name)
            for key, result in entry["results"].items():
                got = merged.attacks[name]["results"][key]
                self.assertEqual(got["robust_accuracy"], result["robust_accuracy"], (name, key))
                self.assertEqual(got.get("attacked_examples"), result.get("attacked_examples"))
                self.assertEqual(got.get("step_size"), result.get("step_size"))
        self.assertEqual(merged.worst_case_accuracy_by_eps, single["worst_case_accuracy_by_eps"])
        self.assertEqual(merged.worst_case_accuracy, single["worst_case_accuracy"])
        self.assertEqual(merged.robust_examples, single["robust_examples"])

    def test_three_shards_merge_to_the_single_run(self):
        single, _ = single_and_shards()
        reports = shard_reports()
        merged = merge([reports[2], reports[0], reports[1]])  # Any order.
        self.assert_same_numbers(merged, single)
        # The numbers are not trivial: the attacks broke some images, not all.
        self.assertLess(merged.worst_case_accuracy, merged.clean_accuracy)
        self.assertGreater(len(merged.robust_examples), 0)
        self.assertGreater(max(merged.robust_examples), 20)  # Shifted out of shard 0.
        self.assertIn(evaluation.DOUBLED, merged.attacks)
        self.assertAlmostEqual(
            merged.zero_gradient_examples_percent, single["zero_gradient_examples_percent"]
        )
        self.assertAlmostEqual(
            merged.zero_gradient_entries_percent, single["zero_gradient_entries_percent"]
        )
        self.assertEqual(merged.metadata["split"], f"test[0:{NUM_EXAMPLES}]")
        self.assertEqual(merged.metadata["model_sha256"], MODEL_SHA256)
        shards = merged.metadata["shards"]
        self.assertEqual([s["split"] for s in shards], ["test[0:20]", "test[20:60]", "test[60:80]"])
        self.assertEqual(
            [s["report"] for s in shards], ["shard1.json", "shard2.json", "shard0.json"]
        )
        self.assertGreater(merged.attacks["pgd"]["results"]["0.3"]["seconds"], 0)

    def test_masking_check_failed_in_any_shard_fails(self):
        single, shards = single_and_shards()
        merged = merge(shard_reports())
        for name, check in merged.checks.items():
            failed = any(s["checks"][name]["passed"] is False for s in shards)
            expected = False if failed else single["checks"][name]["passed"]
            self.assertEqual(check["passed"], expected, name)
        reports = shard_reports()
        reports[1].checks["zero_gradients"] = {"passed": False, "message": "edited."}
        check = merge(reports).checks["zero_gradients"]
        self.assertIs(check["passed"], False)
        self.assertEqual(check["failed_in_shards"], ["shard1.json"])
        self.assertIn("shard1.json (shard1.json: edited.)", check["message"])

    def test_cascade_shards_merge_to_the_single_run(self):
        # FGSM has no random start, so the cascade's batches of survivors,
        # which differ between shards and one run, give the same results.
        attacks = ("fgsm", "bpda_identity:fgsm")
        single, shards = single_and_shards(attacks, worst_case_only=True)
        merged = merge([evaluation.Report.from_json(s) for s in shards])
        self.assertTrue(merged.worst_case_only)
        self.assert_same_numbers(merged, single)
        attacked = merged.attacks["bpda_identity:fgsm"]["results"]["0.3"]["attacked_examples"]
        self.assertLess(attacked, NUM_EXAMPLES)


def _edit(index, **changes):
    """The shard reports with report `index` changed (dotted keys into its JSON)."""
    reports = shard_reports()
    data = reports[index].to_json()
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = data
        for key in path:
            node = node[key]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    reports[index] = evaluation.Report.from_json(data)
    return reports


class RefusedTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("other_model", {"model_sha256": "6" * 64}, "model_sha256: '5555"),
        ("other_seed", {"seed": 4, "settings__seed": 4}, "seed: 3 -> 4"),
        ("other_eps", {"eps": 0.2}, "eps: 0.3 -> 0.2"),
        ("other_steps", {"attacks__pgd__settings__num_steps": 7}, "num_steps: 5 -> 7"),
        ("other_dataset", {"dataset": "fashion_mnist"}, "dataset: 'mnist' -> 'fashion_mnist'"),
        ("other_precision", {"mixed_precision": "mixed_bfloat16"}, "mixed_precision"),
        ("other_mode", {"worst_case_only": True}, "worst_case_only: False -> True"),
        ("fewer_attacks", {"attacks__fgsm": None}, "attacks"),
    )
    def test_other_run_is_refused(self, changes, expected):
        with self.assertRaisesRegex(evaluation.MergeError, "not shards of one evaluation") as e:
            merge(_edit(2, **changes))
        self.assertIn("shard0.json and shard2.json", str(e.exception))
        self.assertIn(expected, str(e.exception))

    def test_overlap_is_refused(self):
        reports = _edit(1, split="test[10:50]")
        with self.assertRaisesRegex(
            evaluation.MergeError,
            r"shard0.json \(test\[0:20\]\) and shard1.json \(test\[10:50\]\) overlap",
        ):
            merge(reports)
        with self.assertRaisesRegex(evaluation.MergeError, "overlap"):
            merge([*shard_reports(), shard_reports()[0]])

    def test_gap_is_refused_with_the_missing_range(self):
        reports = shard_reports()
        with self.assertRaisesRegex(
            evaluation.MergeError,
            r"shard0.json \(test\[0:20\]\) and shard1.json \(test\[60:80\]\) leave "
            r"test\[20:60\] out: evaluate --split=test\[20:60\] --num_examples=0",
        ):
            merge([reports[0], reports[2]])

    def test_report_without_model_digest_is_refused(self):
        with self.assertRaisesRegex(evaluation.MergeError, "shard1.json record.* no model_sha256"):
            merge(_edit(1, model_sha256=None))

    @parameterized.named_parameters(
        ("no_split", None, "records no split"),
        ("from_the_end", "test[-60:-20]", "non-negative bounds"),
    )
    def test_unplaceable_split_is_refused(self, split, expected):
        with self.assertRaisesRegex(evaluation.MergeError, f"shard1.json .*{expected}"):
            merge(_edit(1, split=split))

    def test_edited_accuracy_is_refused(self):
        with self.assertRaisesRegex(evaluation.MergeError, "shard0.json: clean_accuracy = 91.3%"):
            merge(_edit(0, clean_accuracy=91.3))

    def test_no_reports_is_refused(self):
        with self.assertRaisesRegex(evaluation.MergeError, "No reports to merge"):
            evaluation.merge_reports([])


if __name__ == "__main__":
    absltest.main()
