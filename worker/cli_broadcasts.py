"""`wahero-bulk broadcasts`: recurring broadcasts on a cron schedule."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from worker.cli_common import fail, message_and_csv, recipient_options, setup
from worker.control import ControlError, parse_campaign_id
from worker.inputerrors import InputError


@click.group("broadcasts")
def broadcasts() -> None:
    """Recurring broadcasts: a saved campaign sent at every cron occurrence."""


@broadcasts.command("create")
@click.option("--name", required=True, help="Name; each campaign is named after it and its time.")
@recipient_options("Recipients (header row with a `phone` column), saved with the broadcast.")
@click.option("--cron", required=True, help="When, as a cron expression: '0 9 * * MON'.")
@click.option("--timezone", "zone", help="Zone of the cron expression (default WAHERO_TIMEZONE).")
@click.option(
    "--priority", type=click.Choice(["normal", "high"]), default="normal", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def create(
    name: str,
    instance_id: str,
    csv_path: str,
    message: str | None,
    template_path: str | None,
    cron: str,
    zone: str | None,
    priority: str,
    as_json: bool,
) -> None:
    """Save a recurring broadcast; the beat starts a campaign at each occurrence."""
    from worker.broadcasts import create_broadcast, list_broadcasts
    from worker.csvinput import read_recipients

    settings = setup()
    message = message_and_csv(message, template_path, csv_path)
    try:
        broadcast_id = create_broadcast(
            name=name,
            instance_id=instance_id,
            message=message,
            cron=cron,
            zone=zone or settings.timezone,
            recipients=read_recipients(csv_path),
            priority=1 if priority == "high" else 0,
            source=Path(csv_path).name,
        )
    except InputError as error:
        fail(str(error))
    row = next(b for b in list_broadcasts() if b.id == broadcast_id)
    if as_json:
        click.echo(json.dumps(row.as_dict()))
        return
    click.echo(str(broadcast_id))
    next_local = row.next_run_at.astimezone(settings.zone)
    click.echo(f"next occurrence {next_local:%Y-%m-%d %H:%M %Z}", err=True)


@broadcasts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def list_command(as_json: bool) -> None:
    """List the recurring broadcasts and their next occurrences."""
    from worker.broadcasts import list_broadcasts

    settings = setup()
    rows = list_broadcasts()
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows]))
        return
    table = Table("id", "name", "cron", "zone", "status", "next (local)", "recipients")
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            row.cron,
            row.timezone,
            row.status,
            f"{row.next_run_at.astimezone(settings.zone):%Y-%m-%d %H:%M %Z}",
            str(row.recipients),
        )
    Console().print(table)


def _change(broadcast_id: str, status: str | None) -> None:
    from worker.broadcasts import delete_broadcast, set_broadcast_status

    setup()
    try:
        target = parse_campaign_id(broadcast_id)
        if status is None:
            delete_broadcast(target)
        else:
            set_broadcast_status(target, status)
    except (ControlError, InputError) as error:
        fail(str(error).replace("campaign id", "broadcast id"))
    click.echo(f"broadcast {target}: {status or 'deleted'}")


@broadcasts.command("pause")
@click.argument("broadcast_id")
def pause(broadcast_id: str) -> None:
    """Skip a broadcast's occurrences until it is resumed."""
    _change(broadcast_id, "paused")


@broadcasts.command("resume")
@click.argument("broadcast_id")
def resume(broadcast_id: str) -> None:
    """Run a paused broadcast again from its next occurrence."""
    _change(broadcast_id, "active")


@broadcasts.command("delete")
@click.argument("broadcast_id")
def delete(broadcast_id: str) -> None:
    """Delete a broadcast (the campaigns it created stay)."""
    _change(broadcast_id, None)
