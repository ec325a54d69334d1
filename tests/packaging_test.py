"""Tests of the package as users install it: `pip install .` and the requirement files."""

import ast
import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib

from absl.testing import absltest

import sq_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a build reads, beside the folders of Python code that package discovery
# must leave out. Results, runs and build outputs stay behind, and the build
# writes nothing into the checkout.
_BUILT_FROM = ("pyproject.toml", "README.md", "sq_keras", "apps", "benchmarks", "tests")


def _copy_checkout(dest):
    os.makedirs(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in _BUILT_FROM:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(dest, name), ignore=ignore)
        else:
            shutil.copy(source, dest)


# Runs in a fresh interpreter whose only first-party code is the installed copy.
_USE_INSTALLED = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np

    import sq_keras
    from sq_keras import data, layers, models, provenance

    images, labels = data.load_arrays("mnist", "test[:100]")
    x = images.astype(np.float32) / 255.0
    model = models.build(
        "madry_mnist", input_shape=(28, 28, 1), num_classes=10,
        soft_quantization={"num_thresholds": 1, "alpha": 10.0},
    )
    staircase = layers.SoftQuantization(num_thresholds=1, alpha=100.0, hard=True)
    levels = np.unique(np.asarray(staircase(x, training=False)))
    json.dump({
        "file": sq_keras.__file__,
        "version": sq_keras.__version__,
        "git_commit": provenance.git_commit(),
        "logits_shape": list(model(x).shape),
        "levels": levels.tolist(),
        "first_party": sorted(
            m for m in sys.modules if m.split(".")[0] in ("apps", "tests", "benchmarks")
        ),
    }, sys.stdout)
    """
)


def _run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def _relative_py_files(package_dir):
    return sorted(
        os.path.relpath(path, package_dir)
        for path in glob.glob(os.path.join(package_dir, "**", "*.py"), recursive=True)
    )


class InstallTest(absltest.TestCase):
    """`pip install .` into a folder outside the checkout, then use it from there."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._tmp = tempfile.TemporaryDirectory()
        cls.tmp = cls._tmp.name
        project = os.path.join(cls.tmp, "project")
        # The install lands inside another git repository, as a virtual
        # environment inside some checkout would.
        os.makedirs(project)
        _run(["git", "init", "-q", project], check=True)
        _run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q"]
            + ["--allow-empty", "-m", "other project"],
            cwd=project,
            check=True,
        )
        cls.target = os.path.join(project, "site-packages")
        source = os.path.join(cls.tmp, "source")
        _copy_checkout(source)
        # No index and no build isolation: the build backend already installed
        # (setuptools) builds the wheel offline; --no-deps keeps the TensorFlow
        # of this environment.
        cls.pip = _run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + [
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--no-cache-dir",
                "--target",
                cls.target,
                source,
            ]
        )

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.assertEqual(self.pip.returncode, 0, self.pip.stdout + self.pip.stderr)

    def test_only_the_library_is_installed_with_every_module(self):
        installed = set(os.listdir(self.target))
        self.assertIn(f"sq_keras-{sq_keras.__version__}.dist-info", installed)
        self.assertEqual(
            {name for name in installed if not name.endswith(".dist-info")}, {"sq_keras"}
        )
        self.assertEqual(
            _relative_py_files(os.path.join(self.target, "sq_keras")),
            _relative_py_files(os.path.join(ROOT, "sq_keras")),
        )

    def test_the_installed_copy_imports_and_works_outside_the_checkout(self):
        env = {**os.environ, "PYTHONPATH": self.target, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = _run([sys.executable, "-c", _USE_INSTALLED], cwd=self.tmp, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        out = json.loads(proc.stdout)
        self.assertEqual(os.path.commonpath([out["file"], self.target]), self.target, out["file"])
        self.assertEqual(out["version"], sq_keras.__version__)
        self.assertEqual(out["first_party"], [])
        self.assertEqual(out["logits_shape"], [100, 10])
        # The exact staircase of real digits: black and white, nothing between.
        self.assertEqual(out["levels"], [0.0, 1.0])
        # Installed code is not the commit of the repository around it.
        self.assertIsNone(out["git_commit"])


def _pins(path):
    """`{normalised name: version}` of the `name==version` lines of a requirements file."""
    pins = {}
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-r "):
                continue
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.]+)", line)
            assert match, f"{path}: not pinned exactly: {line!r}"
            pins[_normalise(match.group(1))] = match.group(2)
    return pins


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement):
    return _normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))


def _third_party_imports(*directories):
    """Top-level names of the modules imported by the .py files under `directories`."""
    names = set()
    # A script may import a sibling module of its own folder.
    siblings = set()
    for directory in directories:
        for path in glob.glob(os.path.join(ROOT, directory, "**", "*.py"), recursive=True):
            siblings.add(os.path.splitext(os.path.basename(path))[0])
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    first_party = {"sq_keras", "apps", "tests", "benchmarks"} | siblings
    return {n for n in names if n not in first_party and n not in sys.stdlib_module_names}


def _distributions(modules):
    """`{normalised distribution name}` that provide the top-level `modules`."""
    providers = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in providers)
    assert not missing, f"imported but provided by no installed distribution: {missing}"
    return {_normalise(dist) for m in modules for dist in providers[m]}


# Needed at run time though sq_keras does not import them itself: each names
# the module of a runtime dependency that imports it, and why the pin is ours.
# benchmarks/reference_autoattack.py compares with the reference AutoAttack
# (PyTorch), installed by hand as its docstring says; no requirements file
# pins them, so they need not be installed here.
_UNPINNED_BENCHMARK_PEERS = {"torch", "autoattack"}

_INDIRECT = {
    # tensorflow-datasets imports it, but declares it only for Python < 3.9.
    "importlib-resources": (
        "tensorflow_datasets.core.dataset_builder",
        "import importlib_resources",
    ),
    # TensorFlow no longer depends on tensorboard; tf.summary.histogram needs it.
    "tensorboard": ("tensorflow.python.summary.tb_summary", "from tensorboard.summary"),
}


class RequirementsTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            self.project = tomllib.load(f)["project"]
        self.runtime = _pins("requirements.txt")
        self.dev = _pins("requirements-dev.txt")

    def test_every_runtime_pin_is_used_by_the_library_or_apps(self):
        imported = _distributions(_third_party_imports("sq_keras", "apps"))
        self.assertEqual(set(self.runtime) - set(_INDIRECT), imported)
        for name, (module, statement) in _INDIRECT.items():
            with self.subTest(name):
                with open(importlib.util.find_spec(module).origin) as f:
                    self.assertIn(statement, f.read())

    def test_runtime_requirements_hold_no_test_or_benchmark_package(self):
        # What the library and apps need, and what those packages require.
        needed = _distributions(_third_party_imports("sq_keras", "apps")) | set(_INDIRECT)
        brought = needed | {
            _requirement_name(r)
            for name in needed
            for r in importlib.metadata.requires(name) or []
            if "extra ==" not in r
        }
        peers = _third_party_imports("tests", "benchmarks") - _UNPINNED_BENCHMARK_PEERS
        test_only = _distributions(peers) - brought
        self.assertTrue({"cleverhans", "foolbox", "adversarial-robustness-toolbox"} <= test_only)
        self.assertEqual(test_only & set(self.runtime), set())
        self.assertEqual(test_only - set(self.dev), set())

    def test_dev_requirements_add_to_the_runtime_pins(self):
        with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
            self.assertIn("-r requirements.txt\n", f.readlines())
        self.assertEqual(set(self.runtime) & set(self.dev), set())
        extras = self.project["optional-dependencies"]
        declared = {_requirement_name(r) for r in extras["test"] + extras["bench"]}
        self.assertEqual(declared, set(self.dev))

    def test_declared_ranges_hold_the_pinned_versions(self):
        from packaging.requirements import Requirement

        extras = self.project["optional-dependencies"]
        self.assertEqual(
            {_requirement_name(r) for r in self.project["dependencies"]}, set(self.runtime)
        )
        pins = {**self.runtime, **self.dev}
        for requirement in self.project["dependencies"] + extras["test"] + extras["bench"]:
            parsed = Requirement(requirement)
            with self.subTest(requirement):
                self.assertIn(pins[_normalise(parsed.name)], parsed.specifier)


if __name__ == "__main__":
    absltest.main()
