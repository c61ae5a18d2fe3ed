"""Ops commands: review delivery records and control campaigns."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import click

from worker.cli_common import fail, setup


def _campaign_command(action: str) -> Callable[[str], None]:
    def command(campaign_id: str) -> None:
        from worker import control

        setup()
        try:
            target = control.parse_campaign_id(campaign_id)
            outcome = getattr(control, action)(target)
        except control.ControlError as error:
            fail(str(error))
        extra = f" ({outcome} messages)" if isinstance(outcome, int) else ""
        click.echo(f"campaign {target}: {action}{'d' if action.endswith('e') else 'ed'}{extra}")

    command.__name__ = action
    command.__doc__ = {
        "pause": "Pause a campaign until resume.",
        "resume": "Resume a paused or halted campaign (re-queues its dead letters).",
        "cancel": "Cancel a campaign: its pending messages are never sent.",
    }[action]
    return command


_CONTROL = [
    click.command(action)(click.argument("campaign_id")(_campaign_command(action)))
    for action in ("pause", "resume", "cancel")
]


@click.command()
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

    setup()
    try:
        count = control.retry(control.parse_campaign_id(campaign_id), status)
    except control.ControlError as error:
        fail(str(error))
    click.echo(f"campaign {campaign_id}: {count} {status} messages queued again")


@click.command()
@click.argument("campaign_id")
@click.option("--watch", is_flag=True, help="Refresh in place until the campaign ends.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def show(campaign_id: str, watch: bool, as_json: bool) -> None:
    """One campaign: progress, counts by status, cost, timing."""
    from worker import control
    from worker.reports import campaign_summary
    from worker.views import campaign_panel, print_campaign

    settings = setup()
    try:
        target = control.parse_campaign_id(campaign_id)
    except control.ControlError as error:
        fail(str(error))
    summary = campaign_summary(target)
    if summary is None:
        fail(f"no campaign {target}")
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


OPS_COMMANDS: list[click.Command] = [*_CONTROL, retry, show]
