"""Tests for sq_keras.jsonio."""

import json
import os
from unittest import mock

import numpy as np
from absl.testing import absltest

from sq_keras import jsonio


class JsonIoTest(absltest.TestCase):
    def test_round_trip_converts_numpy_values_and_nan(self):
        path = os.path.join(self.create_tempdir().full_path, "sub", "out.json")
        payload = {
            "int": np.int64(3),
            "float": np.float32(0.5),
            "nan": float("nan"),
            "flag": np.bool_(True),
            "array": np.array([1, 2]),
            "tuple": (1, 2),
            1: "integer key",
        }
        jsonio.write_json(path, payload)
        self.assertEqual(
            jsonio.read_json(path),
            {
                "int": 3,
                "float": 0.5,
                "nan": None,
                "flag": True,
                "array": [1, 2],
                "tuple": [1, 2],
                "1": "integer key",
            },
        )

    def test_sort_keys(self):
        path = os.path.join(self.create_tempdir().full_path, "out.json")
        jsonio.write_json(path, {"b": 1, "a": 2}, sort_keys=True)
        with open(path) as f:
            text = f.read()
        self.assertLess(text.index('"a"'), text.index('"b"'))

    def test_a_failed_write_keeps_the_previous_file_whole(self):
        path = os.path.join(self.create_tempdir().full_path, "out.json")
        jsonio.write_json(path, {"version": 1})
        with mock.patch.object(json, "dump", side_effect=RuntimeError("killed mid-write")):
            with self.assertRaises(RuntimeError):
                jsonio.write_json(path, {"version": 2})
        self.assertEqual(jsonio.read_json(path), {"version": 1})


if __name__ == "__main__":
    absltest.main()
