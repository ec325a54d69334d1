"""Tests for sq_keras.progress."""

import io

from absl.testing import absltest

from sq_keras import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class ProgressTest(absltest.TestCase):
    def test_a_file_gets_one_plain_line_per_item_without_escape_codes(self):
        stream = io.StringIO()
        seen = list(progress.items([10, 20, 30], "pgd eps=0.3", stream=stream))
        self.assertEqual(seen, [10, 20, 30])
        lines = stream.getvalue().splitlines()
        self.assertLen(lines, 3)
        self.assertTrue(lines[0].startswith("pgd eps=0.3: batch 1/3 ("))
        self.assertIn("ETA", lines[0])
        self.assertTrue(lines[2].startswith("pgd eps=0.3: batch 3/3 ("))
        self.assertNotIn("\r", stream.getvalue())
        self.assertNotIn("\x1b", stream.getvalue())

    def test_the_status_after_each_item_is_read_after_the_item_is_done(self):
        done = []
        stream = io.StringIO()
        for item in progress.items([1, 2], "apgd", stream=stream, status=lambda: f"{sum(done)}"):
            done.append(item)
        lines = stream.getvalue().splitlines()
        self.assertTrue(lines[0].endswith("; 1)"), lines)
        self.assertTrue(lines[1].endswith("; 3)"), lines)

    def test_a_terminal_bar_shows_the_status(self):
        stream = _Terminal()
        list(progress.items(range(2), "square", stream=stream, status=lambda: "7 fooled"))
        self.assertIn("7 fooled", stream.getvalue())

    def test_an_iterator_without_length_is_counted_without_eta(self):
        stream = io.StringIO()
        list(progress.items(iter("ab"), "epoch", stream=stream, unit="step"))
        lines = stream.getvalue().splitlines()
        self.assertEqual(
            [line.split(" (")[0] for line in lines], ["epoch: step 1", "epoch: step 2"]
        )
        self.assertNotIn("ETA", stream.getvalue())

    def test_a_terminal_gets_a_redrawn_bar(self):
        stream = _Terminal()
        self.assertEqual(list(progress.items(range(3), "square", stream=stream)), [0, 1, 2])
        self.assertIn("\r", stream.getvalue())

    def test_disabled_writes_nothing(self):
        stream = io.StringIO()
        self.assertEqual(list(progress.items([1, 2], "x", enabled=False, stream=stream)), [1, 2])
        self.assertEqual(stream.getvalue(), "")

    def test_is_terminal(self):
        self.assertFalse(progress.is_terminal(io.StringIO()))
        self.assertTrue(progress.is_terminal(_Terminal()))


if __name__ == "__main__":
    absltest.main()
