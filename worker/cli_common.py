"""Shared pieces of the command line: one-line errors, settings and logging, time parsing."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from worker.logs import setup_logging
from worker.settings import ConfigError, Settings, get_settings


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def setup() -> Settings:
    try:
        settings = get_settings()
    except ConfigError as error:
        fail(str(error))
    setup_logging(settings.log_level)
    return settings


def parse_at(value: str | None, settings: Settings) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(
            f"--at: not an ISO-8601 time: {value!r} (e.g. 2026-12-24T09:00 or "
            "2026-12-24T09:00+07:00)"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=settings.zone)
    return moment


def message_and_csv(message: str | None, template_path: str | None, csv_path: str) -> str:
    """The template from --message or --template (exactly one), once the CSV is known to exist."""
    if (message is None) == (template_path is None):
        fail("give exactly one of --message TEXT or --template FILE")
    if template_path is not None:
        try:
            message = Path(template_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            fail(f"{template_path}: cannot read the template: {error}")
    assert message is not None
    if not Path(csv_path).is_file():
        fail(f"{csv_path}: no such file")
    return message


F = TypeVar("F", bound=Callable[..., Any])


def recipient_options(csv_help: str) -> Callable[[F], F]:
    """--instance, --csv, --message and --template: what a campaign or a broadcast sends."""

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--instance",
                    "instance_id",
                    required=True,
                    help="Wahero instance id that sends.",
                ),
                click.option(
                    "--csv",
                    "csv_path",
                    required=True,
                    type=click.Path(dir_okay=False),
                    help=csv_help,
                ),
                click.option("--message", help="The message template (Jinja2: {{ name }})."),
                click.option(
                    "--template",
                    "template_path",
                    type=click.Path(dir_okay=False),
                    help="A file holding the message template.",
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate
