"""The two ways to install (pip extras, conda environment.yml) name the same packages and bounds."""

import re

import tomllib
import yaml

from conftest import REPO


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"]}
    for extra in ("book", "test"):
        wanted |= {_norm(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = {_norm(r) for r in pip if not r.startswith("-e")}
    assert have == wanted, {"only in environment.yml": have - wanted, "only in pyproject.toml": wanted - have}


def test_every_dependency_is_bounded_both_ways():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for v in project["optional-dependencies"].values() for r in v]
    for r in reqs:
        assert ">=" in r and "<" in r, f"{r} needs a lower and an upper bound"
    assert any(r.startswith("jupyter-book>=1.0.4,<2") for r in reqs)


def test_ci_script_calls_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
