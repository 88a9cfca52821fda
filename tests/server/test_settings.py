"""``server.toml``: relative paths mean the file's folder, also in ``[federation]`` (the ServerApp
runs in another working directory, where a relative path would point elsewhere)."""

from __future__ import annotations

from pathlib import Path

from survfed.app.config import resolve_path_keys
from survfed.server.federation import read_settings

TOML = """
[server]
workdir = "state"

[sites]
iowa = "keys/iowa.pub"

[federation]
eval-cohorts = "heldout/a, /data/b"
detector-init = "~/runs/fed"
detector-rounds = 0
"""


def test_relative_paths_are_the_config_files_folder(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "server.toml"
    config.parent.mkdir()
    config.write_text(TOML)
    settings = read_settings(config)
    etc = tmp_path / "etc"
    assert settings.workdir == etc / "state"
    assert settings.sites["iowa"] == etc / "keys" / "iowa.pub"
    fed = settings.federation_config()
    assert fed.eval_cohorts == (str(etc / "heldout" / "a"), "/data/b")
    assert fed.detector_init == str(Path("~/runs/fed").expanduser())
    assert fed.run_path == etc / "state" / "runs" / "run"


def test_only_path_keys_change() -> None:
    data = {"detector-init": "", "eval-cache-dir": "c", "encoder": "small", "run-dir": "r"}
    out = resolve_path_keys(data, Path("/srv"))
    assert out == {**data, "eval-cache-dir": "/srv/c"}
    assert data["eval-cache-dir"] == "c"  # the input is left alone
