"""``python -m dashboard.serve``: ``panel serve dashboard/app.py`` with imgflow's settings.

One way to start the dashboard, for the demo launcher and docker-compose, so
that authentication is configured the same everywhere: with
``IMGFLOW_DASHBOARD_AUTH_FILE`` set, Panel's basic authentication
(``--basic-auth FILE``) asks for a user name and password from that JSON file
(``{"alice": "password", ...}``) and signs its session cookie with
``IMGFLOW_COOKIE_SECRET``. Without it the dashboard is open, as in the local demo.

The file is checked here before Panel sees it, because Panel treats a
``--basic-auth`` value that is not an existing file as *the password for any
user name*: a typo in the path would otherwise leave a guessable login. The
cookie secret goes to Panel through ``PANEL_COOKIE_SECRET`` rather than
``--cookie-secret`` so that it never shows in the process list.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

APP = Path(__file__).resolve().parent / "app.py"


class AuthConfigError(ValueError):
    """The dashboard's authentication settings cannot work; the message says how to fix them."""


def check_auth_file(path: Path) -> dict[str, str]:
    """The users of a credentials file: a JSON object of non-empty user name -> password strings."""
    try:
        users = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuthConfigError(f"IMGFLOW_DASHBOARD_AUTH_FILE {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise AuthConfigError(f"IMGFLOW_DASHBOARD_AUTH_FILE {path} is not readable JSON: {exc}") from None
    if not isinstance(users, dict) or not users:
        raise AuthConfigError(f"IMGFLOW_DASHBOARD_AUTH_FILE {path} must hold a JSON object of user: password")
    for user, password in users.items():
        if not user or not isinstance(password, str) or not password:
            raise AuthConfigError(
                f"IMGFLOW_DASHBOARD_AUTH_FILE {path}: user {user!r} needs a non-empty password"
            )
    return users


def serve_command(
    settings: Any,
    *,
    address: str,
    port: int,
    origins: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) that serve the dashboard under ``settings``."""
    panel = str(Path(sys.executable).parent / "panel")
    argv = [panel, "serve", str(APP), "--address", address, "--port", str(port)]
    for origin in origins:
        argv += ["--allow-websocket-origin", origin]
    env: dict[str, str] = {}
    if settings.dashboard_auth_file is not None:
        if settings.cookie_secret is None:
            raise AuthConfigError(
                "IMGFLOW_DASHBOARD_AUTH_FILE needs IMGFLOW_COOKIE_SECRET (a long random string) "
                "to sign the login cookie"
            )
        auth_file = Path(settings.dashboard_auth_file).resolve()
        check_auth_file(auth_file)
        argv += ["--basic-auth", str(auth_file)]
        env["PANEL_COOKIE_SECRET"] = settings.cookie_secret.get_secret_value()
    return argv + list(extra), env


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=5006, show_default=True, help="Port to listen on.")
@click.option(
    "--allow-websocket-origin", "origins", multiple=True, help="Host[:port] the page may be opened from."
)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def main(address: str, port: int, origins: tuple[str, ...], extra: tuple[str, ...]) -> None:
    """Serve the dashboard: ``panel serve dashboard/app.py``, with its login when configured;
    other options go to ``panel serve``."""
    from imgflow.settings import Settings

    try:
        argv, env = serve_command(Settings(), address=address, port=port, origins=list(origins), extra=extra)
    except AuthConfigError as exc:
        raise SystemExit(f"dashboard: {exc}") from None
    # Replace this process: whoever started it (the launcher, Docker) stops Panel by this PID.
    os.execve(argv[0], argv, {**os.environ, **env})


if __name__ == "__main__":
    main()
