"""The `wahero-bulk` command line."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click

from worker.logs import setup_logging
from worker.settings import ConfigError, Settings, get_settings


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


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _setup() -> Settings:
    try:
        settings = get_settings()
    except ConfigError as error:
        _fail(str(error))
    setup_logging(settings.log_level)
    return settings


def _parse_at(value: str | None, settings: Settings) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        _fail(
            f"--at: not an ISO-8601 time: {value!r} (e.g. 2026-12-24T09:00 or "
            "2026-12-24T09:00+07:00)"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=settings.zone)
    return moment


@main.command()
@click.option("--instance", "instance_id", required=True, help="Wahero instance id that sends.")
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Recipients: header row with a `phone` column; other columns are variables.",
)
@click.option("--message", help="The message template (Jinja2: {{ name }}).")
@click.option(
    "--template",
    "template_path",
    type=click.Path(dir_okay=False),
    help="A file holding the message template.",
)
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
    if (message is None) == (template_path is None):
        _fail("give exactly one of --message TEXT or --template FILE")
    if template_path is not None:
        try:
            message = Path(template_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            _fail(f"{template_path}: cannot read the template: {error}")
    assert message is not None
    if not Path(csv_path).is_file():
        _fail(f"{csv_path}: no such file")
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
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Start a worker (extra arguments go to `celery worker`)."""
    settings = _setup()
    try:
        settings.require_api_key()
    except ConfigError as error:
        _fail(str(error))
    from worker.app import app

    concurrency = str(max(4, settings.jobs_per_campaign))
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        concurrency,
        "--queues",
        "wahero.high,wahero",
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


def _campaign_command(action: str) -> Callable[[str], None]:
    def command(campaign_id: str) -> None:
        from worker import control

        _setup()
        try:
            target = control.parse_campaign_id(campaign_id)
            outcome = getattr(control, action)(target)
        except control.ControlError as error:
            _fail(str(error))
        extra = f" ({outcome} messages)" if isinstance(outcome, int) else ""
        click.echo(f"campaign {target}: {action}{'d' if action.endswith('e') else 'ed'}{extra}")

    command.__name__ = action
    command.__doc__ = {
        "pause": "Pause a campaign until resume.",
        "resume": "Resume a paused or halted campaign (re-queues its dead letters).",
        "cancel": "Cancel a campaign: its pending messages are never sent.",
    }[action]
    return command


for _action in ("pause", "resume", "cancel"):
    main.command(_action)(click.argument("campaign_id")(_campaign_command(_action)))


@main.command()
@click.argument("campaign_id")
@click.option(
    "--status",
    type=click.Choice(["failed", "unknown"]),
    required=True,
    help="Which messages to send again.",
)
def retry(campaign_id: str, status: str) -> None:
    """Send a campaign's failed or unknown messages again, on purpose."""
    from worker import control

    _setup()
    try:
        count = control.retry(control.parse_campaign_id(campaign_id), status)
    except control.ControlError as error:
        _fail(str(error))
    click.echo(f"campaign {campaign_id}: {count} {status} messages queued again")


@main.command()
@click.argument("campaign_id")
@click.option("--watch", is_flag=True, help="Refresh in place until the campaign ends.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def show(campaign_id: str, watch: bool, as_json: bool) -> None:
    """One campaign: progress, counts by status, cost, timing."""
    from worker import control
    from worker.reports import campaign_summary
    from worker.views import campaign_panel, print_campaign

    settings = _setup()
    try:
        target = control.parse_campaign_id(campaign_id)
    except control.ControlError as error:
        _fail(str(error))
    summary = campaign_summary(target)
    if summary is None:
        _fail(f"no campaign {target}")
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    if not watch:
        print_campaign(summary, settings.zone)
        return
    from rich.live import Live

    with Live(campaign_panel(summary, settings.zone), refresh_per_second=2) as live:
        while summary.status in ("running", "scheduled", "paused"):
            time.sleep(1)
            summary = campaign_summary(target) or summary
            live.update(campaign_panel(summary, settings.zone))


from worker.simulator import simulate_command  # noqa: E402

main.add_command(simulate_command, "simulate")


def run() -> None:
    """Entry point with one-line errors for configuration problems."""
    try:
        main(standalone_mode=True)
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
