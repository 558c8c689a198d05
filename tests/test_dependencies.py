"""The dependency floors pyproject.toml promises: versions with known holes are never accepted."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from helpers.repo import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the floors are the same on 3.10


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {(r := Requirement(line)).name: r for line in project["dependencies"]}


def test_torch_is_at_least_2_6_for_cve_2025_32434():
    """torch.load(weights_only=True), which every checkpoint load here relies on to run no pickled
    code, could still run code from a crafted file before torch 2.6 (CVE-2025-32434)."""
    deps = _requirements()
    torch, vision = deps["torch"].specifier, deps["torchvision"].specifier
    assert not torch.contains("2.5.1") and not torch.contains("2.1.0") and torch.contains("2.6.0")
    assert not vision.contains("0.20.1") and vision.contains("0.21.0")  # torchvision 0.20 pins torch 2.5
