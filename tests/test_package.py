"""nightcast installs as one package: the repository's flows/, tasks/, models/, schemas/ and
deployments/ land under nightcast.* and nothing generic reaches the top of site-packages."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("flows", "tasks", "models", "schemas", "deployments")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("nightcast-*.whl")
    return path


def test_the_wheel_installs_only_the_nightcast_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"nightcast", next(t for t in tops if t.endswith(".dist-info"))}
    assert not any(n.split("/")[0] in GENERIC for n in names)
    for sub in ("flows/cli.py", "tasks/data/clean.py", "tasks/forecast/combine.py", "tasks/serving/score.py",
                "tasks/ops/registry.py", "tasks/ops/templates/report.html", "models/network.py", "schemas/params.py",
                "deployments/prefect.yaml"):
        assert f"nightcast/{sub}" in names, sub
    assert not any("/tests/" in n or n.startswith("nightcast/bench") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nightcast = nightcast.flows.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_no_module_is_imported_under_a_generic_top_level_name():
    code = ("import sys, nightcast.flows.cli, nightcast.flows.serve as s; s.build_deployments(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {GENERIC!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_tasks_are_grouped_by_concern_and_each_group_says_what_it_owns():
    loose = sorted(p.name for p in (REPO / "tasks").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    for group in ("data", "forecast", "serving", "ops"):
        init = (REPO / "tasks" / group / "__init__.py").read_text()
        assert init.startswith('"""') and len(init) > 60, group


def test_no_private_prefect_name_is_used():
    """The code reaches Prefect through its public API only: no underscored module, name or attribute."""
    import ast

    found = []
    for path in [p for d in GENERIC for p in (REPO / d).rglob("*.py")]:
        tree = ast.parse(path.read_text())
        prefect_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefect"):
                parts = node.module.split(".") + [a.name for a in node.names]
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if any(p.startswith("_") for p in parts)]
                prefect_names |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("prefect") and any(p.startswith("_") for p in a.name.split("."))]
        for node in ast.walk(tree):  # an underscored attribute of something imported from Prefect
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in prefect_names):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert found == []
