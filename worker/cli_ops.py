"""Ops commands: review delivery records and control campaigns.

Human output is Rich tables on stdout; `--json` prints one JSON document there and nothing else
(logs go to stderr). Refusals and bad ids are one line on stderr with exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from worker.cli_common import fail, setup

CAMPAIGN_STATUSES = ("scheduled", "running", "paused", "halted", "completed", "cancelled")
MESSAGE_STATUSES = (
    "pending",
    "sending",
    "sent",
    "failed",
    "unknown",
    "dead",
    "skipped",
    "cancelled",
)
# `show --watch` stops at these: nothing changes any more without an operator.
_WATCH_ENDS = ("completed", "cancelled", "halted")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _campaign_id(value: str) -> uuid.UUID:
    """A campaign id that names an existing campaign, else a one-line error (exit 2)."""
    from worker import control
    from worker.reports import campaign_exists

    try:
        target = control.parse_campaign_id(value)
    except control.ControlError as error:
        fail(str(error))
    if not campaign_exists(target):
        fail(f"no campaign {target}")
    return target


def _console() -> Any:
    from rich.console import Console

    # Wide enough that ids and times are not wrapped when stdout is a pipe or a file
    # (COLUMNS, when set, still wins).
    wide = os.isatty(1) or "COLUMNS" in os.environ
    return Console(width=None if wide else 200)


def _echo_json_list(items: Iterable[dict[str, Any]]) -> None:
    """A JSON list written item by item: a million records never sit in memory at once."""
    first = True
    for item in items:
        click.echo(("[" if first else ",\n") + json.dumps(item), nl=False)
        first = False
    click.echo("[]" if first else "]")


# ---- campaigns ---------------------------------------------------------------------------


@click.command()
@click.option("--status", type=click.Choice(CAMPAIGN_STATUSES), help="Only campaigns in it.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="Newest N.")
@_json_option
def campaigns(status: str | None, limit: int, as_json: bool) -> None:
    """List campaigns, newest first, with progress, counts and cost."""
    from worker.reports import campaign_summaries
    from worker.views import campaigns_table

    settings = setup()
    found = campaign_summaries(status, limit)
    if as_json:
        click.echo(json.dumps([summary.as_dict() for summary in found]))
        return
    if not found:
        click.echo("no campaigns" + (f" {status}" if status else ""), err=True)
        return
    _console().print(campaigns_table(found, settings.zone))


@click.command()
@click.argument("campaign_id")
@click.option("--watch", is_flag=True, help="Refresh in place until the campaign ends.")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(0.1), help="Seconds."
)
@_json_option
def show(campaign_id: str, watch: bool, interval: float, as_json: bool) -> None:
    """One campaign: progress, counts by status, cost, rate, time left."""
    from worker.reports import campaign_summary
    from worker.views import campaign_panel

    settings = setup()
    target = _campaign_id(campaign_id)
    summary = campaign_summary(target)
    if summary is None:
        fail(f"no campaign {target}")
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    console = _console()
    if not watch or summary.status in _WATCH_ENDS:
        console.print(campaign_panel(summary, settings.zone))
        return
    from rich.live import Live

    try:
        with Live(campaign_panel(summary, settings.zone), console=console) as live:
            while summary.status not in _WATCH_ENDS:
                time.sleep(interval)
                summary = campaign_summary(target) or summary
                live.update(campaign_panel(summary, settings.zone), refresh=True)
    except KeyboardInterrupt:
        pass


# ---- delivery records --------------------------------------------------------------------


@click.command()
@click.argument("campaign_id")
@click.option("--status", type=click.Choice(MESSAGE_STATUSES), help="Only messages in it.")
@click.option(
    "--limit",
    type=click.IntRange(1),
    help="At most N records (default: all; 100 for the table view).",
)
@_json_option
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout (streamed).")
def messages(
    campaign_id: str, status: str | None, limit: int | None, as_json: bool, as_csv: bool
) -> None:
    """A campaign's delivery records, in id order."""
    from worker.reports import MESSAGE_FIELDS, iter_messages
    from worker.views import messages_table

    settings = setup()
    if as_json and as_csv:
        fail("give at most one of --json and --csv")
    target = _campaign_id(campaign_id)
    if as_json:
        _echo_json_list(iter_messages(target, status, limit))
        return
    if as_csv:
        from worker.exports import write_csv

        rows = (tuple(r.values()) for r in iter_messages(target, status, limit))
        write_csv(sys.stdout, MESSAGE_FIELDS, rows)
        return
    shown = limit or 100
    rows_ = list(iter_messages(target, status, shown + 1))
    title = f"messages of {target}" + (f" ({status})" if status else "")
    _console().print(messages_table(rows_[:shown], settings.zone, title))
    if len(rows_) > shown:
        click.echo(f"showing the first {shown}; --limit N for more, --csv for all", err=True)


@click.command()
@click.argument("campaign_id")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to FILE (replaced only once complete) instead of stdout.",
)
def export(campaign_id: str, output: str | None) -> None:
    """The whole campaign as CSV, every column, streamed (formula cells neutralised)."""
    from worker.exports import export_campaign

    setup()
    target = _campaign_id(campaign_id)
    if output is None:
        export_campaign(target, sys.stdout)
        return
    path = Path(output)
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            count = export_campaign(target, out)
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        fail(f"{output}: {error.strerror or error}", code=1)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    click.echo(f"{count} messages written to {output}", err=True)


# ---- control -----------------------------------------------------------------------------


def _control(action: str, campaign_id: str, *args: Any) -> tuple[uuid.UUID, Any]:
    from worker import control

    setup()
    try:
        target = control.parse_campaign_id(campaign_id)
        return target, getattr(control, action)(target, *args)
    except control.ControlError as error:
        fail(str(error))


@click.command()
@click.argument("campaign_id")
def pause(campaign_id: str) -> None:
    """Pause a campaign until resume (messages in flight finish)."""
    target, _ = _control("pause", campaign_id)
    click.echo(f"campaign {target} paused")


@click.command()
@click.argument("campaign_id")
def resume(campaign_id: str) -> None:
    """Resume a paused or halted campaign (re-queues its dead letters)."""
    target, replayed = _control("resume", campaign_id)
    click.echo(f"campaign {target} resumed; {replayed} dead-lettered messages queued again")


@click.command()
@click.argument("campaign_id")
def cancel(campaign_id: str) -> None:
    """Cancel a campaign: its pending messages are never sent."""
    target, count = _control("cancel", campaign_id)
    click.echo(f"campaign {target} cancelled; {count} unsent messages cancelled")


@click.command()
@click.argument("campaign_id")
# A plain string, so `--status sent` gets control's one-line refusal, not a usage screen.
@click.option("--status", required=True, metavar="failed|unknown", help="Which messages.")
def retry(campaign_id: str, status: str) -> None:
    """Send a campaign's failed or unknown messages again, on purpose."""
    target, count = _control("retry", campaign_id, status.strip().lower())
    click.echo(f"campaign {target}: {count} {status} messages queued again")


# ---- dead letters ------------------------------------------------------------------------


@click.group("dead-letters", invoke_without_command=True)
@click.option("--campaign", "campaign_id", help="Only this campaign's.")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed ones.")
@_json_option
@click.pass_context
def dead_letters(
    ctx: click.Context, campaign_id: str | None, include_replayed: bool, as_json: bool
) -> None:
    """The dead-letter list (sends that failed UNAUTHORIZED); `replay` puts them back."""
    if ctx.invoked_subcommand is not None:
        return
    from worker.reports import dead_letters as list_dead_letters
    from worker.views import dead_letters_table

    settings = setup()
    target = _campaign_id(campaign_id) if campaign_id is not None else None
    entries = list_dead_letters(target, include_replayed)
    if as_json:
        click.echo(json.dumps([entry.as_dict() for entry in entries]))
    elif entries:
        _console().print(dead_letters_table(entries, settings.zone))
    else:
        click.echo("no dead letters", err=True)


@dead_letters.command("replay")
@click.option("--campaign", "campaign_id", required=True, help="The campaign whose to replay.")
def replay(campaign_id: str) -> None:
    """Put a campaign's dead-lettered messages back to pending (sent if it runs)."""
    target, count = _control("replay_dead_letters", campaign_id)
    click.echo(f"campaign {target}: {count} dead-lettered messages queued again")


# ---- suppressions ------------------------------------------------------------------------


@click.group()
def suppress() -> None:
    """The opt-out list: numbers never sent to (also by campaigns already running)."""


def _phone_call(action: str, phone: str, *args: Any) -> tuple[str, bool]:
    from worker import suppressions
    from worker.inputerrors import InputError

    setup()
    try:
        result: tuple[str, bool] = getattr(suppressions, action)(phone, *args)
    except InputError as error:
        fail(f"{phone!r}: {error.reason}")
    return result


@suppress.command("add")
@click.argument("phone")
@click.option("--reason", help="Why (kept with the number).")
def suppress_add(phone: str, reason: str | None) -> None:
    """Never send to PHONE again."""
    number, new = _phone_call("add", phone, reason)
    click.echo(f"{number} suppressed" + ("" if new else " (already on the list)"))


@suppress.command("remove")
@click.argument("phone")
def suppress_remove(phone: str) -> None:
    """Take PHONE off the opt-out list."""
    number, was = _phone_call("remove", phone)
    click.echo(f"{number} removed" if was else f"{number} was not on the list")


@suppress.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
def suppress_import(file: str) -> None:
    """Suppress every number of a CSV (a `phone` column, optional `reason`); all or nothing."""
    from worker import suppressions
    from worker.inputerrors import InputError

    setup()
    try:
        result = suppressions.import_csv(file)
    except InputError as error:
        fail(str(error))
    click.echo(f"{result.added} numbers suppressed, {result.already} already on the list")


@suppress.command("list")
@_json_option
def suppress_list(as_json: bool) -> None:
    """The opt-out list, in number order."""
    from worker import suppressions
    from worker.views import suppressions_table

    settings = setup()
    if as_json:
        _echo_json_list(entry.as_dict() for entry in suppressions.list_all())
        return
    entries = list(suppressions.list_all())
    if entries:
        _console().print(suppressions_table(entries, settings.zone))
    else:
        click.echo("no suppressed numbers", err=True)
