"""A site runs only the survfed code it installed: FAB pinning for ``flower-supernode``.

What flwr 1.41 does on its own: when a message of a new run arrives, the SuperNode
downloads the run's FAB (a zip the submitter built with ``flwr run``), unpacks it into
``$FLWR_HOME/apps/...`` and starts ``flwr-clientapp``, which puts that folder first on
``sys.path`` and imports the ``clientapp`` reference from the FAB's ``pyproject.toml``.
So by default a site executes whatever code the submitter of a run put in the FAB.
Flower's only built-in check (``--trusted-entities``, signed FABs) needs a SuperLink that
verifies FABs, which the open-source SuperLink does not.

survfed's rule: a FAB is accepted only if

* it holds nothing but ``pyproject.toml`` (plus the ``.info/CONTENT`` hash list) — no
  Python modules, no ``.pth`` files, no data: the code must come from the installed
  package;
* its app id (``publisher/name``) and version are in the site's allow-list (by default
  ``survfed/survfed`` at the installed ``survfed.__version__``);
* its ``serverapp`` and ``clientapp`` references point into allowed module prefixes
  (default ``survfed.app.``).

Anything else is answered with Flower's own ``INVALID_FAB`` error reply ("The FAB could not
be verified.") without installing or running it, and the SuperNode keeps serving.

:func:`check_fab` is the pure policy. :func:`install` hooks it into the SuperNode process
(via the ``trusted_entities`` code path of ``flwr.supernode.start_client_internal``) and
refuses to run on an unrecognised flwr version. ``python -m survfed.client.app_pinning
<flower-supernode args>`` runs a pinned SuperNode; the policy comes from the environment
(:data:`ENV_ALLOWED_APPS`, :data:`ENV_ALLOWED_MODULES`).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ENV_ALLOWED_APPS = "SURVFED_ALLOWED_APPS"
"""Comma-separated ``publisher/name==version`` entries, e.g. ``survfed/survfed==0.1.0``."""
ENV_ALLOWED_MODULES = "SURVFED_ALLOWED_MODULES"
"""Comma-separated module prefixes the components may reference, e.g. ``survfed.app.``."""
VERDICT_KEY = "survfed-pin"
SUPPORTED_FLWR = ("1.41.",)
_ALLOWED_MEMBERS = frozenset({"pyproject.toml", ".info/CONTENT"})


@dataclass(frozen=True)
class AppPolicy:
    """Which FABs a site accepts: ``apps`` maps ``publisher/name`` to the allowed version."""

    apps: Mapping[str, str]
    module_prefixes: tuple[str, ...] = ("survfed.app.",)

    def __post_init__(self) -> None:
        if not self.apps:
            raise ValueError("AppPolicy.apps must allow at least one app")
        for app_id, version in self.apps.items():
            if app_id.count("/") != 1 or not version:
                raise ValueError(
                    f"AppPolicy.apps entry {app_id!r}={version!r} must be "
                    "'publisher/name' mapped to a version"
                )
        if not self.module_prefixes or not all(self.module_prefixes):
            raise ValueError("AppPolicy.module_prefixes must be non-empty prefixes")

    @classmethod
    def default(cls) -> AppPolicy:
        """Only the survfed app of the installed survfed version."""
        import survfed

        return cls(apps={"survfed/survfed": survfed.__version__})

    def to_env(self) -> dict[str, str]:
        """Environment variables that :meth:`from_env` reads back."""
        return {
            ENV_ALLOWED_APPS: ",".join(f"{a}=={v}" for a, v in sorted(self.apps.items())),
            ENV_ALLOWED_MODULES: ",".join(self.module_prefixes),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppPolicy:
        """Read the policy from :data:`ENV_ALLOWED_APPS` / :data:`ENV_ALLOWED_MODULES`."""
        raw = env.get(ENV_ALLOWED_APPS, "").strip()
        if not raw:
            return cls.default()
        apps: dict[str, str] = {}
        for entry in raw.split(","):
            app_id, sep, version = entry.strip().partition("==")
            if not sep:
                raise ValueError(
                    f"{ENV_ALLOWED_APPS} entry {entry!r} must look like publisher/name==version"
                )
            apps[app_id.strip()] = version.strip()
        modules = tuple(
            m.strip() for m in env.get(ENV_ALLOWED_MODULES, "survfed.app.").split(",") if m
        )
        return cls(apps=apps, module_prefixes=modules)


def check_fab(content: bytes, policy: AppPolicy) -> str | None:
    """Return why the FAB ``content`` is refused under ``policy``, or ``None`` if accepted."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            extra = sorted(set(names) - _ALLOWED_MEMBERS)
            if extra:
                return (
                    f"the FAB carries files other than pyproject.toml ({', '.join(extra[:5])}"
                    f"{', ...' if len(extra) > 5 else ''}); this site runs only installed code"
                )
            if "pyproject.toml" not in names:
                return "the FAB has no pyproject.toml"
            config = tomllib.loads(zf.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        return f"the FAB is not a readable app bundle: {err}"

    project = config.get("project", {})
    app_cfg = config.get("tool", {}).get("flwr", {}).get("app", {})
    app_id = f"{app_cfg.get('publisher', '')}/{project.get('name', '')}"
    version = str(project.get("version", ""))
    if app_id not in policy.apps:
        return f"app {app_id!r} is not allowed on this site (allowed: {sorted(policy.apps)})"
    if version != policy.apps[app_id]:
        return (
            f"app {app_id!r} version {version!r} differs from the installed version "
            f"{policy.apps[app_id]!r}"
        )
    components = app_cfg.get("components", {})
    for role in ("serverapp", "clientapp"):
        ref = str(components.get(role, ""))
        if not ref.startswith(policy.module_prefixes):
            return (
                f"{role} reference {ref!r} is outside the installed modules "
                f"{list(policy.module_prefixes)}"
            )
    return None


def install(policy: AppPolicy) -> None:
    """Hook :func:`check_fab` into the SuperNode code of this process (flwr 1.41 only).

    Three patches, all checked to exist first:

    * the Fleet connection's ``get_fab`` is wrapped to run :func:`check_fab` and record the
      verdict in ``fab.verifications``;
    * ``_verify_fab`` (Flower's signed-FAB check) is replaced by reading that verdict;
    * ``start_client_internal`` is always given a non-empty ``trusted_entities`` so that
      Flower's own verification branch (error reply ``INVALID_FAB``, nothing installed)
      is taken for every new run.
    """
    import flwr
    from flwr.supercore import log

    # import_module: the package re-exports a *function* under the submodule's name
    cli_mod = importlib.import_module("flwr.supernode.cli.flower_supernode")
    sci = importlib.import_module("flwr.supernode.start_client_internal")

    version = getattr(flwr, "__version__", "")
    needed = [
        (sci, "http_request_response"),
        (sci, "_verify_fab"),
        (cli_mod, "start_client_internal"),
    ]
    if not version.startswith(SUPPORTED_FLWR) or not all(hasattr(m, a) for m, a in needed):
        raise RuntimeError(
            f"survfed's app pinning supports flwr {SUPPORTED_FLWR}, found {version!r}; "
            "refusing to start a SuperNode that would run any app it is sent"
        )
    if getattr(sci.http_request_response, "_survfed_pinned", False):
        return
    original_conn = sci.http_request_response
    original_start = cli_mod.start_client_internal

    @contextmanager
    def pinned_conn(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with original_conn(*args, **kwargs) as conn:
            node_id, receive, send, get_run, get_fab, *rest = conn

            def checked_get_fab(fab_hash: str, run_id: int) -> Any:
                fab = get_fab(fab_hash, run_id)
                reason = check_fab(fab.content, policy)
                verdict = {"accepted": reason is None, "reason": reason or ""}
                if reason is not None:
                    log(40, "survfed: refusing run %s: %s", run_id, reason)  # 40 = ERROR
                fab.verifications = {
                    **fab.verifications,
                    "valid_license": "survfed-local-pinning",
                    VERDICT_KEY: json.dumps(verdict),
                }
                return fab

            yield (node_id, receive, send, get_run, checked_get_fab, *rest)

    def verify(fab: Any, _trusted: Any) -> bool:
        raw = fab.verifications.get(VERDICT_KEY)
        return bool(raw) and bool(json.loads(raw).get("accepted"))

    def start(*args: Any, **kwargs: Any) -> Any:
        kwargs["trusted_entities"] = {VERDICT_KEY: "local app pinning"}
        if kwargs.get("runtime_dependency_install"):
            raise RuntimeError("survfed sites never install app dependencies at run time")
        return original_start(*args, **kwargs)

    pinned_conn._survfed_pinned = True  # type: ignore[attr-defined]
    sci.http_request_response = pinned_conn
    sci._verify_fab = verify
    cli_mod.start_client_internal = start


def main(argv: list[str] | None = None) -> None:
    """Run ``flower-supernode`` with FAB pinning; arguments are flower-supernode's own."""
    from flwr.supernode.cli import flower_supernode

    install(AppPolicy.from_env(os.environ))
    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()


if __name__ == "__main__":
    main()
