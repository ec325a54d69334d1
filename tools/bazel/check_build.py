"""Checks that BUILD still matches the Python sources, in about a second.

Bazel only finds a missing dependency when a test fails with an ImportError,
minutes into `bazel test`. This reads BUILD (plain Python syntax) and the
sources' imports, and reports, with the fix to make:

* a .py file under sq_keras/, apps/, tests/ or benchmarks/ in no target's srcs;
* a tests/*_test.py without a py_test, an apps/*.py without a py_binary;
* a first-party import (sq_keras.*, apps.*, tests.*) whose file is not in the
  importing target's srcs or transitive deps;
* a test that runs `python -m apps.NAME` without `:NAME` (the py_binary) in
  its data.

Usage: python tools/bazel/check_build.py [REPO_ROOT]. Exits 1 on a problem.
"""

import ast
import glob
import os
import re
import sys

FIRST_PARTY = ("sq_keras", "apps", "tests")
SOURCE_DIRS = ("sq_keras", "apps", "tests", "benchmarks", "examples")


def read_build(root):
    """Evaluates BUILD with stand-ins for the rules; returns {name: attrs}."""
    targets = {}

    def rule(kind):
        def record(name, **attrs):
            attrs["kind"] = kind
            targets[name] = attrs

        return record

    env = {k: rule(k) for k in ("py_library", "py_binary", "py_test", "filegroup")}
    env.update(
        package=lambda **_: None,
        load=lambda *_, **__: None,
        exports_files=lambda *_, **__: None,
        glob=lambda include, **_: sorted(
            p for pattern in include for p in glob.glob(pattern, root_dir=root, recursive=True)
        ),
    )
    path = os.path.join(root, "BUILD")
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), env)  # noqa: S102 (our own BUILD file)
    return targets


def label_name(label):
    if label.startswith("//:"):
        return label[3:]
    if label.startswith(":"):
        return label[1:]
    return None  # external or other package: not checked


def module_files(root, module):
    """Candidate files for a dotted module name, nearest first."""
    parts = module.split(".")
    candidates = []
    for i in range(len(parts), 0, -1):
        base = os.path.join(*parts[:i])
        candidates.append(base + ".py")
        candidates.append(os.path.join(base, "__init__.py"))
    return [c for c in candidates if os.path.exists(os.path.join(root, c))]


def lazy_exports(root):
    """`{"sq_keras.Name": "sq_keras.module"}` of `_LAZY_EXPORTS` in sq_keras/__init__.py.

    The package loads these names on first use (`importlib`), so a file that
    uses `sq_keras.Name` needs the module's target although it imports only
    `sq_keras`.
    """
    path = os.path.join(root, "sq_keras", "__init__.py")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY_EXPORTS" for t in node.targets
        ):
            exports = ast.literal_eval(node.value)
            return {f"sq_keras.{name}": module for name, (module, _) in exports.items()}
    return {}


def imported_modules(root, src, lazy=None):
    with open(os.path.join(root, src)) as f:
        tree = ast.parse(f.read(), src)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pkg import mod` may import a submodule.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.add(f"{node.value.id}.{node.attr}")  # e.g. sq_keras.RobustModel
    found = {(lazy or {}).get(m, m) for m in found}
    return {m for m in found if m.split(".")[0] in FIRST_PARTY}


def run_module_targets(root, src):
    """Modules a test runs as `python -m apps.NAME` (string literals)."""
    with open(os.path.join(root, src)) as f:
        text = f.read()
    return set(re.findall(r"""["'](apps\.[A-Za-z_]\w*)["']""", text))


def check(root):
    targets = read_build(root)
    lazy = lazy_exports(root)
    problems = []
    owner = {}
    for name, attrs in targets.items():
        for src in attrs.get("srcs", []):
            owner.setdefault(src, name)

    def closure(name, attr="deps"):
        seen, stack = set(), [name]
        while stack:
            current = stack.pop()
            if current in seen or current not in targets:
                continue
            seen.add(current)
            for label in targets[current].get("deps", []) + (
                targets[current].get(attr, []) if attr != "deps" else []
            ):
                dep = label_name(label)
                if dep:
                    stack.append(dep)
        return seen

    def files_of(names):
        return {src for n in names for src in targets[n].get("srcs", [])}

    for directory in SOURCE_DIRS:
        for src in sorted(glob.glob(f"{directory}/**/*.py", root_dir=root, recursive=True)):
            if src not in owner and src != "apps/__init__.py":  # Bazel adds __init__.py
                if src.startswith("tests/") and src.endswith("_test.py"):
                    stem = os.path.basename(src)[:-3]
                    hint = f'add py_test(name = "{stem}", srcs = ["{src}"], deps = [...])'
                elif src.startswith(("apps/", "benchmarks/")):
                    stem = os.path.basename(src)[:-3]
                    hint = f'add py_binary(name = "{stem}", srcs = ["{src}"], main = "{src}", ...)'
                else:
                    hint = "add it to its package's py_library srcs (or a new py_library)"
                problems.append(f"{src}: in no BUILD target; {hint}")

    for src, name in sorted(owner.items()):
        kind = targets[name]["kind"]
        if src.startswith("tests/") and src.endswith("_test.py") and kind != "py_test":
            problems.append(f"{src}: expected in a py_test, found in {kind} //:{name}")
        if src.startswith("apps/") and src != "apps/__init__.py" and kind != "py_binary":
            problems.append(f"{src}: expected in a py_binary, found in {kind} //:{name}")

    for name, attrs in sorted(targets.items()):
        if attrs["kind"] not in ("py_library", "py_binary", "py_test"):
            continue
        for label in attrs.get("deps", []) + attrs.get("data", []):
            dep = label_name(label)
            if dep and dep not in targets:
                problems.append(f"//:{name}: depends on {label}, which BUILD does not define")
        available = files_of(closure(name))
        for src in attrs.get("srcs", []):
            if not os.path.exists(os.path.join(root, src)):
                problems.append(f"//:{name}: source {src} does not exist")
                continue
            reported = set()
            for module in sorted(imported_modules(root, src, lazy)):
                files = module_files(root, module)
                if not files:
                    continue  # e.g. `from pkg import name` where name is not a module
                target_file = files[0]
                needed = owner.get(target_file)
                if target_file in available or (needed or target_file) in reported:
                    continue
                reported.add(needed or target_file)
                fix = (
                    f'add ":{needed}" to its deps'
                    if needed
                    else (f"{target_file} is in no target: add it to a py_library first")
                )
                problems.append(f"//:{name}: {src} imports {module} ({target_file}); {fix}")
            if attrs["kind"] == "py_test":
                data = {label_name(label) for label in attrs.get("data", [])}
                for module in sorted(run_module_targets(root, src)):
                    binary = owner.get(module.replace(".", "/") + ".py")
                    if binary and binary not in data:
                        problems.append(
                            f'//:{name}: {src} runs `-m {module}`; add ":{binary}" to its data'
                        )
    return problems


def main(argv):
    root = os.path.abspath(
        argv[1]
        if len(argv) > 1
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    )
    problems = check(root)
    for problem in problems:
        print(f"BUILD check: {problem}", file=sys.stderr)
    if problems:
        print(
            f"BUILD check: {len(problems)} problem(s); fix BUILD "
            "(see 'When you add a file' in docs/architecture.md)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
