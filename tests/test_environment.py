"""pyproject.toml, environment.yml and the Makefile install the same pinned dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import mmcourse

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements(path: Path = ROOT / "pyproject.toml") -> list[str]:
    """The dependencies and every optional extra of a pyproject.toml."""
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {}).values()
    return list(project["dependencies"]) + [req for extra in extras for req in extra]


def conda_pip_requirements(path: Path = ROOT / "environment.yml") -> list[str]:
    """The requirements of environment.yml's `pip:` section, without pip options such as `-e .`."""
    return [req for req in _conda_pip_section(path) if not req.startswith("-")]


def _conda_pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep]
    assert len(sections) == 1, f"{path.name} needs exactly one `pip:` section"
    return sections[0]


def _conda_python(path: Path = ROOT / "environment.yml") -> str:
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    pins = [dep for dep in env["dependencies"] if isinstance(dep, str) and dep.startswith("python")]
    assert len(pins) == 1, f"{path.name} must pin python once, got {pins}"
    return pins[0].removeprefix("python").lstrip("=")


def _key(requirement: str) -> tuple[str, str, str, str]:
    req = Requirement(requirement)
    return (
        canonicalize_name(req.name),
        str(req.specifier),
        ",".join(sorted(req.extras)),
        str(req.marker) if req.marker else "",
    )


def requirement_differences(left: list[str], right: list[str]) -> list[str]:
    """One line per dependency that `left` and `right` do not state identically (name, version,
    extras and environment marker), naming the dependency; empty when they agree."""
    a = {_key(req)[0]: _key(req) for req in left}
    b = {_key(req)[0]: _key(req) for req in right}
    problems = []
    for name in sorted(a.keys() | b.keys()):
        if name not in b:
            problems.append(f"{name}: only in the first list ({a[name][1]})")
        elif name not in a:
            problems.append(f"{name}: only in the second list ({b[name][1]})")
        elif a[name] != b[name]:
            problems.append(f"{name}: {_describe(a[name])} vs {_describe(b[name])}")
    return problems


def _describe(key: tuple[str, str, str, str]) -> str:
    name, spec, extras, marker = key
    return name + (f"[{extras}]" if extras else "") + spec + (f"; {marker}" if marker else "")


def test_environment_yml_matches_pyproject():
    problems = requirement_differences(pyproject_requirements(), conda_pip_requirements())
    assert not problems, "pyproject.toml vs environment.yml:\n" + "\n".join(problems)


def test_environment_yml_installs_the_package():
    assert "-e ." in _conda_pip_section(ROOT / "environment.yml")


def test_environment_yml_python_satisfies_requires_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    python = _conda_python()
    assert SpecifierSet(project["requires-python"]).contains(python + ".0"), (
        f"environment.yml pins python={python}, outside requires-python "
        f"{project['requires-python']}"
    )


def test_every_dependency_is_pinned_exactly():
    loose = [
        req
        for req in pyproject_requirements()
        if [spec.operator for spec in Requirement(req).specifier] != ["=="]
    ]
    assert not loose, f"pin these with ==: {loose}"


def test_makefile_torch_matches_the_pin():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^TORCH \?= (.+)$", makefile, flags=re.MULTILINE)
    assert match, "Makefile must define `TORCH ?= torch==<version>`"
    torch_pin = [req for req in pyproject_requirements() if _key(req)[0] == "torch"]
    assert requirement_differences([match.group(1).strip()], torch_pin) == []


def test_differences_are_reported_by_name():
    left = [
        "torch==2.13.0",
        "numpy==2.4.6",
        'triton==3.9.0; platform_system == "Linux"',
        "tqdm==4.70.1",
        "scikit-learn==1.9.1",
    ]
    right = [
        "torch==2.13.0",
        "numpy==2.4.5",
        'triton==3.9.0; platform_system == "Darwin"',
        "einops==0.8.2",
        "Scikit_Learn==1.9.1",
    ]
    problems = requirement_differences(left, right)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    for name in ("numpy", "triton", "tqdm", "einops"):
        assert name in text
    assert "torch" not in text and "scikit" not in text  # equal, once names are normalised
    assert requirement_differences(left, left) == []


def test_device_fixture_is_the_course_device(device):
    assert isinstance(device, torch.device)
    assert device == mmcourse.device()


@pytest.mark.gpu
def test_cuda_computes(device):
    assert device.type == "cuda", "run GPU tests with MMCOURSE_DEVICE=cuda (make test-gpu)"
    assert torch.version.cuda, f"torch {torch.__version__} is a CPU-only build"
    x = torch.randn(256, 256, device=device)
    assert torch.allclose((x @ x.T).cpu(), x.cpu() @ x.cpu().T, atol=1e-3)


def test_cpu_model_names_the_processor():
    name = mmcourse.env.cpu_model()  # what the benchmarks and chapter 10's samples file record
    assert isinstance(name, str) and name.strip()
