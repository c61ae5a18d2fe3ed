"""The `wahero-bulk` command line."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path

import click

from worker.cli_common import fail as _fail
from worker.cli_common import message_and_csv, recipient_options
from worker.cli_common import parse_at as _parse_at
from worker.cli_common import setup as _setup
from worker.settings import ConfigError

# Commands defined elsewhere, imported only when asked for: a command starts without loading
# the simulator's web server, Celery or Rich unless it needs them.
LAZY_COMMANDS = {
    "simulate": "worker.simulator:simulate_command",
    "health": "worker.health:health_command",
    "broadcasts": "worker.cli_broadcasts:broadcasts",
    "campaigns": "worker.cli_ops:campaigns",
    "show": "worker.cli_ops:show",
    "messages": "worker.cli_ops:messages",
    "export": "worker.cli_ops:export",
    "pause": "worker.cli_ops:pause",
    "resume": "worker.cli_ops:resume",
    "cancel": "worker.cli_ops:cancel",
    "retry": "worker.cli_ops:retry",
    "dead-letters": "worker.cli_ops:dead_letters",
    "suppress": "worker.cli_ops:suppress",
}


class LazyGroup(click.Group):
    """A group whose LAZY_COMMANDS are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@recipient_options("Recipients: header row with a `phone` column; other columns are variables.")
@click.option("--name", help="A name for the campaign (default: the CSV's name).")
@click.option("--at", "at", help="Start at this ISO-8601 time (naive = WAHERO_TIMEZONE).")
@click.option("--idempotency-key", help="The same key twice returns the first campaign.")
@click.option(
    "--priority",
    type=click.Choice(["normal", "high"]),
    default="normal",
    show_default=True,
    help="High-priority campaigns are sent first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def enqueue(
    instance_id: str,
    csv_path: str,
    message: str | None,
    template_path: str | None,
    name: str | None,
    at: str | None,
    idempotency_key: str | None,
    priority: str,
    as_json: bool,
) -> None:
    """Create a campaign from a CSV and start (or schedule) it."""
    from worker.inputerrors import InputError
    from worker.producer import enqueue_csv

    settings = _setup()
    message = message_and_csv(message, template_path, csv_path)
    scheduled_at = _parse_at(at, settings)
    try:
        result = enqueue_csv(
            instance_id=instance_id,
            message=message,
            csv_path=csv_path,
            name=name,
            scheduled_at=scheduled_at,
            idempotency_key=idempotency_key,
            priority=1 if priority == "high" else 0,
        )
    except InputError as error:
        _fail(str(error))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(str(result.campaign_id))
        skipped = ", ".join(f"{k} {v}" for k, v in result.skipped.items())
        click.echo(f"{result.status}: {result.accepted} accepted; skipped: {skipped}", err=True)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--processes",
    type=click.IntRange(min=0, max=256),
    help="Sending processes; 0 = one per CPU core.  [default: WAHERO_WORKER_PROCESSES]",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, celery_args: tuple[str, ...]) -> None:
    """Start a worker (extra arguments go to `celery worker`)."""
    settings = _setup()
    try:
        settings.require_api_key()
    except ConfigError as error:
        _fail(str(error))
    count = settings.worker_processes if processes is None else processes
    if count == 0:
        from worker.supervisor import cpu_count

        count = cpu_count()
    if count > 1:
        from worker.supervisor import run_group

        sys.exit(run_group(count, celery_args))
    from worker.app import app

    concurrency = str(max(4, settings.jobs_per_campaign))
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        concurrency,
        "--queues",
        "wahero.control,wahero.high,wahero",
        "--loglevel",
        settings.log_level.upper(),
        "--without-gossip",
        "--without-mingle",
        *celery_args,
    ]
    app.worker_main(argv)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Start the single scheduler: it ticks every WAHERO_BEAT_INTERVAL seconds (run one)."""
    settings = _setup()
    from worker.app import app

    schedule = Path(tempfile.gettempdir()) / "wahero-bulk-beat-schedule"
    argv = [
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        settings.log_level.upper(),
        *celery_args,
    ]
    app.start(argv)


def run() -> None:
    """Entry point with one-line errors for configuration problems."""
    try:
        main(standalone_mode=True)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
