"""End-to-end tests of `python -m apps.merge_reports`, run as a user would:
shards evaluated by `apps.evaluate`, then merged."""

import atexit
import functools
import json
import os
import shutil
import tempfile

import keras
from absl.testing import absltest

from sq_keras import evaluation
from sq_keras.layers import SoftQuantization
from tests import testing_utils

# FGSM has no random start: shards and one run attack every image alike.
_EVALUATE_FLAGS = ("--attacks=fgsm", "--eps=0.1", "--batch_size=30", "--noprogress")


@functools.lru_cache(maxsize=None)
def work_dir():
    """A tiny quantized model, one apps.evaluate run over test[0:60] and two shards."""
    directory = tempfile.mkdtemp(prefix="merge_reports_app_test-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    images, labels = evaluation.load_examples(
        "mnist", "train", num_examples=2000, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="images")
    x = SoftQuantization(num_thresholds=1, alpha=20.0, name="soft_quantization")(inputs)
    x = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    model.save(os.path.join(directory, "model.keras"))
    for name, split in (
        ("single", "test[0:60]"),
        ("shard0", "test[0:30]"),
        ("shard1", "test[30:60]"),
    ):
        _evaluate(directory, name, split)
    return directory


def _evaluate(directory, name, split):
    result = testing_utils.run_app(
        "apps.evaluate",
        f"--model={directory}/model.keras",
        f"--split={split}",
        "--num_examples=0",
        f"--output={directory}/{name}.json",
        *_EVALUATE_FLAGS,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _read(path):
    with open(path) as f:
        return json.load(f)


class MergeReportsAppTest(absltest.TestCase):
    def test_glob_of_shards_merges_to_the_single_run(self):
        directory = work_dir()
        output = os.path.join(self.create_tempdir().full_path, "merged.json")
        result = testing_utils.run_app(
            "apps.merge_reports", f"--reports={directory}/shard*.json", f"--output={output}"
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        merged, single = _read(output), _read(f"{directory}/single.json")
        self.assertEqual(merged["split"], "test[0:60]")
        self.assertEqual(merged["num_examples"], 60)
        self.assertEqual(merged["model_sha256"], single["model_sha256"])
        self.assertEqual(len(merged["model_sha256"]), 64)
        for key in ("clean_accuracy", "worst_case_accuracy_by_eps", "robust_examples"):
            self.assertEqual(merged[key], single[key], key)
        for eps in ("0.1", "0.5"):
            self.assertEqual(
                merged["attacks"]["fgsm"]["results"][eps]["robust_accuracy"],
                single["attacks"]["fgsm"]["results"][eps]["robust_accuracy"],
            )
        self.assertEqual([s["split"] for s in merged["shards"]], ["test[0:30]", "test[30:60]"])
        # Each shard's own run is kept (command, commit, machine); the merged run has none.
        for shard, name in zip(merged["shards"], ("shard0", "shard1")):
            self.assertEqual(shard["evaluated"], _read(f"{directory}/{name}.json")["evaluated"])
            self.assertIn(f"--output={directory}/{name}.json", shard["evaluated"]["command"])
            self.assertIn("machine", shard["evaluated"])
            self.assertIn("git_commit", shard["evaluated"])
        self.assertNotIn("evaluated", merged)
        self.assertEqual(sorted(merged["files"]), ["json", "sweep_plot"])
        self.assertTrue(os.path.isfile(merged["files"]["sweep_plot"]))
        self.assertIn("worst case", result.stdout)
        self.assertIn("Merged 2 reports (60 examples)", result.stdout)

    def test_overlapping_shards_are_refused_with_their_files(self):
        directory = work_dir()
        output = os.path.join(self.create_tempdir().full_path, "merged.json")
        result = testing_utils.run_app(
            "apps.merge_reports",
            f"--reports={directory}/shard0.json,{directory}/single.json",
            f"--output={output}",
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{directory}/shard0.json (test[0:30]) and", result.stderr)
        self.assertIn(f"{directory}/single.json (test[0:60]) overlap", result.stderr)
        self.assertFalse(os.path.exists(output))

    def combine(self, *reports):
        """`(result, output path)` of apps.merge_reports --combine of `reports`."""
        output = os.path.join(self.create_tempdir().full_path, "combined.json")
        result = testing_utils.run_app(
            "apps.merge_reports",
            "--combine",
            f"--reports={','.join(reports)}",
            f"--output={output}",
        )
        return result, output

    def test_combine_gives_the_worst_case_per_image_over_the_common_images(self):
        directory = work_dir()
        result, output = self.combine(f"{directory}/single.json", f"{directory}/shard1.json")
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        combined = _read(output)
        single, shard1 = _read(f"{directory}/single.json"), _read(f"{directory}/shard1.json")
        self.assertEqual(combined["split"], "test[30:60]")
        self.assertEqual(combined["model_sha256"], single["model_sha256"])
        # The same attack on the same images: the robust images of shard1.
        self.assertEqual(combined["robust_examples"], shard1["robust_examples"])
        self.assertEqual(combined["worst_case_accuracy"], shard1["worst_case_accuracy"])
        self.assertEqual(combined["clean_accuracy"], shard1["clean_accuracy"])
        self.assertEqual([e["breaks_alone"] for e in combined["evaluations"]], [[], []])
        self.assertEqual(combined["evaluations"][1]["evaluated"], shard1["evaluated"])
        self.assertIn("Per image over 2 reports, test[30:60] (30 examples)", result.stdout)

    def test_combine_refuses_reports_of_other_models(self):
        directory = work_dir()
        other = os.path.join(self.create_tempdir().full_path, "other.json")
        report = _read(f"{directory}/shard0.json")
        report["model_sha256"] = "0" * 64
        with open(other, "w") as f:
            json.dump(report, f)
        result, output = self.combine(f"{directory}/shard0.json", other)
        self.assertEqual(result.returncode, 1)
        self.assertIn("do not evaluate the same model on the same images", result.stderr)
        self.assertFalse(os.path.exists(output))


if __name__ == "__main__":
    absltest.main()
