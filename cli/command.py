"""How every command is declared, and how it fails when a service is away: one line, not a
traceback.

``@command(option(...), ..., avoid={"MongoDB": "--no-store skips storing"})`` is
``@app.command`` plus this: an error that means MongoDB, the Kafka broker or a worker's web
view cannot be reached ends the command with one line on standard error (which service, at
which address, set by which setting, and the flag that avoids it where there is one) and
exit status :data:`EXIT_UNREACHABLE`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import urllib.error
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from imgflow.app import app, settings
from imgflow.settings import Settings

EXIT_USAGE = 1
#: A service the command needs did not answer (MongoDB, Kafka, a worker).
EXIT_UNREACHABLE = 3


def without_secret(url: str) -> str:
    """A URL as it may be printed: a password in it is replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _first_line(exc: BaseException) -> str:
    """The reason, without a client's configuration dump (pymongo appends its topology)."""
    text = str(exc).strip().splitlines()
    line = (text[0] if text else type(exc).__name__).split(" (configured timeouts")[0]
    return line.split(", Timeout: ")[0][:160]


def unreachable(exc: BaseException, settings: Settings) -> tuple[str, str] | None:
    """(service, one line) if ``exc`` means a service could not be reached, else None."""
    from aiohttp import ClientConnectionError
    from aiokafka.errors import KafkaConnectionError
    from pymongo.errors import ConnectionFailure

    if isinstance(exc, ConnectionFailure):
        where = without_secret(settings.mongo_url)
        return "MongoDB", f"MongoDB at {where} (MONGO_URL) is unreachable: {_first_line(exc)}"
    if isinstance(exc, KafkaConnectionError):
        where = ",".join(settings.bootstrap_servers)
        return "Kafka", f"the Kafka broker at {where} (BROKER_URL) is unreachable: {_first_line(exc)}"
    if isinstance(exc, ClientConnectionError | urllib.error.URLError | ConnectionRefusedError):
        where = ",".join(settings.worker_url_list)
        return "workers", f"no worker answers at {where} (IMGFLOW_WORKER_URLS): {_first_line(exc)}"
    return None


def command(
    *options: Any, avoid: Mapping[str, str] | None = None
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """``@app.command(*options)`` with one-line errors for unreachable services (module docstring).

    ``avoid``: per service ("MongoDB", "Kafka", "workers"), the flag that makes the command
    do without it, added to the line."""
    hints = dict(avoid or {})

    def declare(fun: Callable[..., Awaitable[Any]]) -> Any:
        @functools.wraps(fun)
        async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await fun(self, *args, **kwargs)
            except Exception as exc:
                found = unreachable(exc, settings)
                if found is None:
                    raise
                service, line = found
                hint = f"; {hints[service]}" if service in hints else ""
                name = fun.__name__.replace("_", "-")  # as it is typed: upgrade-store
                self.say(f"{name}: {line}{hint}", file=self.stderr)
                raise SystemExit(EXIT_UNREACHABLE) from None

        return app.command(*options)(run)

    return declare
