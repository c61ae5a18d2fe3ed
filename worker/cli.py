"""The `wahero-bulk` command line."""

from __future__ import annotations

import sys

import click

from worker.settings import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wahero-bulk")
def main() -> None:
    """Bulk WhatsApp campaigns through the Wahero API."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations to DATABASE_URL."""
    from alembic import command

    from migrations import alembic_config
    from worker.settings import get_settings

    try:
        url = get_settings().database_url
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    command.upgrade(alembic_config(url), revision)
    click.echo(f"database at {revision}", err=True)


def run() -> None:
    """Entry point with one-line errors for configuration problems."""
    try:
        main(standalone_mode=True)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
