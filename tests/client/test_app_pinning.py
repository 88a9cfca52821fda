"""Tests for survfed.client.app_pinning: which FABs a site accepts."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from survfed.client.app_pinning import (
    ENV_ALLOWED_APPS,
    ENV_ALLOWED_MODULES,
    AppPolicy,
    check_fab,
)

TOY_APP = Path(__file__).parents[1] / "server" / "flower_toy_app"
POLICY = AppPolicy(apps={"survfed/survfed-toy": "0.1.0"})


def _fab(tmp: Path, pyproject: str, extra: dict[str, str] | None = None) -> bytes:
    """Build a FAB with flwr's own builder (what `flwr run` sends)."""
    app = tmp / "app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(pyproject)
    for name, text in (extra or {}).items():
        (app / name).write_text(text)
    return build_fab_from_disk(app)


def _toy_pyproject() -> str:
    return (TOY_APP / "pyproject.toml").read_text()


def test_the_toy_fab_is_accepted_and_carries_only_pyproject(tmp_path: Path) -> None:
    fab = build_fab_from_disk(TOY_APP)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert sorted(names) == [".info/CONTENT", "pyproject.toml"]
    assert check_fab(fab, POLICY) is None


def test_fab_with_code_is_refused(tmp_path: Path) -> None:
    fab = _fab(tmp_path, _toy_pyproject(), {"helper.py": "x = 1\n"})
    reason = check_fab(fab, POLICY)
    assert reason is not None and "helper.py" in reason


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ('name = "survfed-toy"', 'name = "other-app"', "not allowed"),
        ('version = "0.1.0"', 'version = "0.2.0"', "differs from the installed"),
        ('publisher = "survfed"', 'publisher = "mallory"', "not allowed"),
        ('"survfed.app.toy:client_app"', '"os:system"', "clientapp reference"),
        ('"survfed.app.toy:server_app"', '"evil.app:server"', "serverapp reference"),
    ],
)
def test_fab_outside_the_policy_is_refused(tmp_path: Path, old: str, new: str, expect: str) -> None:
    text = _toy_pyproject()
    assert old in text
    assert expect in (check_fab(_fab(tmp_path, text.replace(old, new)), POLICY) or "")


def test_garbage_is_refused() -> None:
    assert "not a readable" in (check_fab(b"not a zip", POLICY) or "")


def test_policy_round_trips_through_the_environment() -> None:
    policy = AppPolicy(
        apps={"survfed/survfed": "1.2.3", "survfed/x": "0.1"}, module_prefixes=("a.", "b.")
    )
    env = policy.to_env()
    assert env[ENV_ALLOWED_APPS] == "survfed/survfed==1.2.3,survfed/x==0.1"
    assert env[ENV_ALLOWED_MODULES] == "a.,b."
    assert AppPolicy.from_env(env) == policy
    with pytest.raises(ValueError, match=ENV_ALLOWED_APPS):
        AppPolicy.from_env({ENV_ALLOWED_APPS: "survfed/survfed"})
    with pytest.raises(ValueError, match="publisher/name"):
        AppPolicy(apps={"survfed": "1"})


def test_default_policy_pins_the_installed_version() -> None:
    import survfed

    assert AppPolicy.default().apps == {"survfed/survfed": survfed.__version__}
    assert AppPolicy.from_env({}) == AppPolicy.default()
