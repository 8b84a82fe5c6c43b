"""streams.runtime.patches: the worker refuses a Faust or mode version its patches were not tested with."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from streams.runtime.patches import TESTED, UnsupportedFaust, check_versions


def test_the_installed_versions_are_the_tested_ones() -> None:
    check_versions()  # what `wharf worker` runs at start-up: no error for what pyproject.toml installs
    assert {name: version(name) for name in TESTED}  # both packages are installed


@pytest.mark.parametrize(("package", "found"), [("faust-streaming", "0.16.0"), ("faust-streaming", "0.15.2"),
                                                ("mode-streaming", "0.8.0")])
def test_a_version_outside_the_tested_range_is_refused_by_name(package: str, found: str) -> None:
    versions = {name: low for name, (low, _high) in TESTED.items()} | {package: found}
    with pytest.raises(UnsupportedFaust, match=rf"{package} {found} \(tested: >="):
        check_versions(versions)
