"""The house's layout holds: imports point one way between the stages, no module imports
itself back through others, no module grows past the size of one idea, and the layout that
ARCHITECTURE.md describes is the one on disk."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_vae"

#: The stages, bottom to top, and the ones each may import. ``base`` is the building blocks
#: models and guides share (pyro_vae.nn, pyro_vae.distributions).
ALLOWED = {
    "base": {"base"},
    "data": {"base", "data"},
    "models": {"base", "models"},
    "guides": {"base", "models", "guides"},
    "pairs": {"base", "data", "models", "guides", "pairs"},
    "infer": {"base", "data", "pairs", "infer"},
    "runs": {"base", "data", "pairs", "infer", "runs"},
    "training": {"base", "data", "pairs", "infer", "runs", "training"},
    "analysis": {"base", "data", "pairs", "infer", "runs", "analysis"},
    "sweeps": {"base", "data", "pairs", "infer", "runs", "training", "analysis", "sweeps"},
    "cli": {"base", "data", "pairs", "infer", "runs", "training", "analysis", "sweeps", "cli"},
}
#: Modules at the top of the package that are not a stage: the package's front door, the
#: entry point and the old module paths that forward to the new ones.
FRONT = {"pyro_vae", "pyro_vae.__main__", "pyro_vae._moved"}
BASE = {"pyro_vae.nn", "pyro_vae.distributions"}
MAX_LINES = 600


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (models/ and guides/ as installed)."""
    found = {}
    for folder, prefix in ((PACKAGE, "pyro_vae"), (ROOT / "models", "pyro_vae.models"),
                           (ROOT / "guides", "pyro_vae.guides")):  # fmt: skip
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = module_files()


def is_forwarding_shim(path: Path) -> bool:
    return re.search(r"moved_module\(\s*__name__", path.read_text()) is not None


def stage(module: str) -> str | None:
    if module in BASE:
        return "base"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED:
        return parts[1]
    return None


def imports(module: str) -> set[str]:
    """The pyro_vae modules ``module`` imports, anywhere in it (module level or inside a
    function: a lazy import is still a dependency)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name.startswith("pyro_vae") and name != module:
                found.add(name)
    return found


def test_imports_point_one_way_between_the_stages():
    wrong = []
    for module in MODULES:
        if module in FRONT or is_forwarding_shim(MODULES[module]):
            continue
        own = stage(module)
        assert own is not None, f"{module} belongs to no stage; put it in one (ALLOWED)"
        for target in sorted(imports(module)):
            if target in FRONT or is_forwarding_shim(MODULES[target]):
                wrong.append(f"{module} imports {target}, an old path or the package's front")
                continue
            if stage(target) not in ALLOWED[own]:
                wrong.append(f"{module} ({own}) imports {target} ({stage(target)})")
    assert not wrong, "\n".join(wrong)


def test_analysis_needs_no_training_code():
    for module in MODULES:
        if stage(module) == "analysis":
            assert not any(stage(t) == "training" for t in imports(module)), module


def test_no_import_cycles():
    graph = {m: {t for t in imports(m) if t in MODULES} for m in MODULES}
    # a package's __init__ re-exporting its modules is not a cycle with them
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_no_module_grows_past_one_idea():
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    large = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not large, f"split these into a package of their ideas: {large}"


def test_architecture_md_names_every_package():
    """Each package of the house is named in ARCHITECTURE.md as `name/` (nested ones in the
    row of their parent)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py" and m != "pyro_vae"}
    missing = sorted(m for m in packages if f"`{m.rpartition('.')[2]}/`" not in text)
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"


def test_the_import_test_sees_lazy_and_relative_imports(tmp_path):
    """The checks above would pass vacuously if imports() found nothing."""
    found = imports("pyro_vae.analysis.evaluate")
    assert "pyro_vae.infer.estimators" in found and "pyro_vae.runs.reopen" in found
    assert re.search(r"analysis", " ".join(found))


def test_setup_cfg_installs_every_package():
    """A non-editable install takes only the packages setup.cfg lists."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == listed, (sorted(packages - listed), sorted(listed - packages))


def test_no_module_of_the_package_is_ignored_by_git():
    """A module git ignores never reaches a clone (the .gitignore's run directories, runs/,
    once hid pyro_vae/runs/)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    paths = [str(p.relative_to(ROOT)) for p in MODULES.values()]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                            text=True)  # fmt: skip
    assert result.stdout.split() == [], f"git ignores {result.stdout.split()}"


def test_old_module_paths_forward_with_a_deprecation_warning():
    import importlib

    import pytest

    import pyro_vae
    from pyro_vae.infer.estimators import iwae_bound
    from pyro_vae.training.train import train

    old = importlib.import_module("pyro_vae.estimators")
    with pytest.warns(DeprecationWarning, match="pyro_vae.infer.estimators"):
        assert old.iwae_bound is iwae_bound
    with pytest.warns(DeprecationWarning, match="pyro_vae.training.train"):
        from pyro_vae.train import read_config  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        importlib.import_module("pyro_vae.gradvar").nothing  # noqa: B018
    # the functions the package exports keep their names after an old path is imported
    assert pyro_vae.train is train and callable(pyro_vae.evaluate)
    assert callable(pyro_vae.diagnose) and callable(pyro_vae.convergence)
