"""Tests that the README and docs/ stay true to the checkout: links resolve, commands parse."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib

from absl.testing import absltest

from sq_keras import jsonio
from sq_keras.reproduce import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
DOCS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md"))
# Every Markdown page whose links and commands are checked.
PAGES = [README, *DOCS, "results/README.md", "saved_models/README.md"]
MAX_README_LINES = 220

_SHELL_BLOCKS = ("sh", "bash", "shell", "console")
_SHELL_OPERATORS = re.compile(r"^(\||\|\||&&|;|[0-9]?>>?.*|<.*)$")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# Imports each app or benchmark once in one process, parses every command's
# flags with absl as the app would, then drops the module's flags so that the
# next module may define flags of the same names.
_PARSE_FLAGS = textwrap.dedent(
    """
    import importlib
    import importlib.util
    import json
    import sys

    from absl import flags

    FLAGS = flags.FLAGS
    groups, out_path = json.loads(sys.argv[1]), sys.argv[2]
    errors = []
    for module, commands in groups:
        before = set(FLAGS)
        if module.endswith(".py"):
            name = "checked_" + module.replace("/", "_")[:-3]
            spec = importlib.util.spec_from_file_location(name, module)
            sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[name])
        else:
            importlib.import_module(module)
        for args in commands:
            FLAGS.unparse_flags()
            try:
                rest = FLAGS([module] + args)
                errors.append(f"stray arguments {rest[1:]}" if rest[1:] else None)
            except flags.Error as e:
                errors.append(str(e))
        for flag_name in set(FLAGS) - before:
            delattr(FLAGS, flag_name)
    with open(out_path, "w") as f:
        json.dump(errors, f)
    """
)


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def _prose_lines(text):
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def _blocks(text, languages):
    """The bodies of the fenced code blocks whose language is in `languages`."""
    pattern = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
    return [m.group(2) for m in pattern.finditer(text) if m.group(1) in languages]


def _links(text):
    """Link targets of the prose, inline code left out."""
    targets = []
    for line in _prose_lines(text):
        # Backticked text inside a link's label stays a link: drop only the code.
        targets.extend(_LINK.findall(re.sub(r"`[^`]*`", "", line)))
    return targets


def _slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text):
    anchors, seen = set(), {}
    for line in _prose_lines(text):
        match = re.match(r"^#{1,6} (.*)", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _commands(text):
    """Every command line of the shell blocks, as tokens, environment assignments dropped."""
    commands = []
    for block in _blocks(text, _SHELL_BLOCKS):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
                tokens.pop(0)
            for i, token in enumerate(tokens):
                if _SHELL_OPERATORS.match(token):
                    tokens = tokens[:i]
                    break
            if tokens:
                commands.append(tokens)
    return commands


def _program(tokens):
    """`apps.X` or `benchmarks/X.py` when the command runs one, else None."""
    if tokens[0] != "python" or len(tokens) < 2:
        return None
    if tokens[1] == "-m" and len(tokens) > 2 and tokens[2].startswith("apps."):
        return tokens[2]
    if tokens[1].startswith("benchmarks/") and tokens[1].endswith(".py"):
        return tokens[1]
    return None


def _all_commands():
    return [(page, tokens) for page in PAGES for tokens in _commands(_read(page))]


class LinksTest(absltest.TestCase):
    def test_every_relative_link_reaches_a_file_and_its_heading(self):
        checked = 0
        for page in PAGES:
            for target in _links(_read(page)):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto
                path, _, anchor = target.partition("#")
                resolved = (
                    os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
                )
                with self.subTest(page=page, link=target):
                    checked += 1
                    self.assertTrue(os.path.exists(os.path.join(ROOT, resolved)), resolved)
                    if anchor:
                        self.assertEqual(resolved[-3:], ".md", "anchors only into Markdown")
                        self.assertIn(anchor, _anchors(_read(resolved)))
        self.assertGreater(checked, 20)

    def test_readme_links_every_page_of_docs(self):
        linked = {os.path.normpath(target.partition("#")[0]) for target in _links(_read(README))}
        self.assertNotEqual(DOCS, [])
        for page in DOCS:
            self.assertIn(page, linked)

    def test_generated_tables_show_their_comparison(self):
        found = 0
        for page in PAGES:
            for path, lines in summary.blocks(_read(page)):
                payload = jsonio.read_json(os.path.join(ROOT, os.path.dirname(page), path))
                self.assertEqual(
                    lines,
                    summary.summary(payload),
                    f"{page}: the table from {path} is stale; run python -m apps.summarize "
                    f"--page={page}",
                )
                found += 1
        self.assertGreaterEqual(found, 1)

    def test_readme_stays_short(self):
        self.assertLessEqual(len(_read(README).splitlines()), MAX_README_LINES)

    def test_slugs_follow_github(self):
        self.assertEqual(
            _slug("MNIST: the paper's claim, measured"), "mnist-the-papers-claim-measured"
        )
        self.assertEqual(
            _slug("Evaluating robustness (`python -m apps.evaluate`)"),
            "evaluating-robustness-python--m-appsevaluate",
        )


class CommandsTest(absltest.TestCase):
    def test_every_app_and_benchmark_command_parses_with_its_flags(self):
        by_program = {}
        for page, tokens in _all_commands():
            program = _program(tokens)
            if program:
                by_program.setdefault(program, []).append((page, tokens))
        self.assertTrue({"apps.train", "apps.evaluate", "apps.reproduce"} <= set(by_program))
        groups = [
            (program, [tokens[3 if program.startswith("apps.") else 2 :] for _, tokens in cases])
            for program, cases in sorted(by_program.items())
        ]
        out_path = os.path.join(self.create_tempdir().full_path, "errors.json")
        proc = subprocess.run(
            [sys.executable, "-c", _PARSE_FLAGS, json.dumps(groups), out_path],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with open(out_path) as f:
            errors = iter(json.load(f))
        for _, cases in sorted(by_program.items()):
            for page, tokens in cases:
                with self.subTest(page=page, command=shlex.join(tokens)):
                    self.assertIsNone(next(errors))

    def test_the_flag_check_rejects_an_unknown_flag(self):
        out_path = os.path.join(self.create_tempdir().full_path, "errors.json")
        groups = [("apps.reproduce", [["--epochs=2"], ["--epoch=2"], ["--epochs=two"], ["extra"]])]
        subprocess.run(
            [sys.executable, "-c", _PARSE_FLAGS, json.dumps(groups), out_path],
            cwd=ROOT,
            check=True,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        with open(out_path) as f:
            ok, unknown, bad_value, stray = json.load(f)
        self.assertIsNone(ok)
        self.assertIn("epoch", unknown)
        self.assertIn("two", bad_value)
        self.assertIn("extra", stray)

    def test_every_pip_install_names_an_existing_file_or_extra(self):
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            extras = set(tomllib.load(f)["project"]["optional-dependencies"])
        installs = [
            (page, tokens[4:])
            for page, tokens in _all_commands()
            if tokens[:4] == ["python", "-m", "pip", "install"]
        ]
        files = [args[1] for _, args in installs if args[:1] == ["-r"]]
        self.assertEqual(sorted(set(files)), ["requirements-dev.txt", "requirements.txt"])
        for page, args in installs:
            with self.subTest(page=page, args=args):
                if args[0] == "-r":
                    self.assertTrue(os.path.isfile(os.path.join(ROOT, args[1])), args[1])
                else:
                    match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", args[0])
                    self.assertIsNotNone(match, args[0])
                    self.assertLessEqual(
                        set(filter(None, (match.group(1) or "").split(","))), extras
                    )

    def test_readme_runs_the_tests_as_ci_does(self):
        ci = [
            shlex.split(line)
            for line in _read(".ci/run").splitlines()
            if line.startswith("python -m pytest")
        ]
        self.assertLen(ci, 1)
        self.assertIn(ci[0], _commands(_read(README)))


if __name__ == "__main__":
    absltest.main()
