"""``python -m service`` and ``poolgrad-server``: run the service (see :mod:`service.server`).

Every setting of :class:`service.settings.Settings` is a flag, derived from its field: field
``max_body_bytes`` is ``--max-body-bytes`` and ``POOLGRAD_MAX_BODY_BYTES``; a flag wins over the
environment, which wins over the default. ``--help`` lists each with its variable and default.

Nothing starts until the settings are valid, the store URL is usable and the port is bound: each
of those failures ends the command with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from poolgrad._version import __version__
from service.app import store_of
from service.server import bind, serve
from service.settings import Settings, describe_errors
from service.stores import MemoryStore, redacted_url

__all__ = ["main", "parse_settings"]

PROG = "poolgrad-server"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(name: str, field: FieldInfo) -> str:
    """The field's docstring, then its variable, its choices and its default."""
    text = (field.description or "").replace("``", "").replace("%", "%%")
    literal = typing.get_origin(field.annotation) is typing.Literal
    choices = typing.get_args(field.annotation) if literal else ()
    parts = [f"env POOLGRAD_{name.upper()}"]
    if choices:
        parts.append("one of " + ", ".join(map(str, choices)))
    default = "empty" if field.default in ((), "") else repr(field.default)
    parts.append(f"default {default}")
    return f"{text} [{'; '.join(parts)}]"


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field; a flag left out keeps the environment's value."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Serve poolgrad's HTTP API (pooling-layer forward and backward with per-session "
            "state). Every flag mirrors a POOLGRAD_* environment variable; a flag wins."
        ),
        epilog=(
            "Pass API keys in the environment rather than as --api-keys: other users of the "
            "machine can read command lines (ps)."
        ),
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, field in Settings.model_fields.items():
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                help=_help(name, field),
            )
        else:
            # Values stay strings: Settings parses and validates them as it does the environment.
            parser.add_argument(
                _flag(name), dest=name, metavar=name.upper(), help=_help(name, field)
            )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line over the environment; exits with one line per bad value."""
    flags = vars(build_parser().parse_args(argv))
    try:
        return Settings(**flags)
    except ValidationError as exc:
        # "POOLGRAD_PORT: ..." becomes "POOLGRAD_PORT (--port): ...": both ways to fix it.
        lines = []
        for line in describe_errors(exc).strip().splitlines():
            variable, _, problem = line.strip().partition(":")
            if not variable.startswith("POOLGRAD_"):  # settings that do not fit together
                lines.append(line.strip())
                continue
            flag = _flag(variable.removeprefix("POOLGRAD_").lower())
            lines.append(f"{variable} ({flag}):{problem}")
        raise SystemExit(f"{PROG}: invalid setting: {'; '.join(lines)}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, check, bind, then serve; every refusal comes before anything starts."""
    settings = parse_settings(argv)
    try:
        store = store_of(settings)
    except ValueError as exc:
        raise SystemExit(f"{PROG}: {exc}") from None
    if settings.workers > 1 and isinstance(store, MemoryStore):
        raise SystemExit(
            f"{PROG}: POOLGRAD_WORKERS={settings.workers} is refused with the in-memory "
            f"store (POOLGRAD_STORE_URL={redacted_url(settings.store_url)!r}): each worker "
            "process would hold its own sessions, and a request reaching another worker would "
            "not find its session. Several workers need the Redis store, which shares "
            "sessions between processes (POOLGRAD_STORE_URL=redis://host:6379/0), or "
            "POOLGRAD_WORKERS=1."
        )
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise SystemExit(
            f"{PROG}: cannot listen on {settings.host}:{settings.port} "
            f"(POOLGRAD_HOST, POOLGRAD_PORT): {exc.strerror or exc}"
        ) from None
    # One worker serves with the store checked above; spawned workers each build their own.
    serve(settings, sock, store if settings.workers == 1 else None)


if __name__ == "__main__":
    main()
