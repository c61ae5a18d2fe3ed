"""Human renderings of ops data (Rich); JSON output never goes through here."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table

from worker.reports import CampaignSummary

STATUS_ORDER = ("sent", "pending", "sending", "failed", "unknown", "dead", "skipped", "cancelled")


def local_time(value: datetime | None, zone: tzinfo) -> str:
    """A stored UTC time in the operator's zone, or a dash."""
    if value is None:
        return "—"
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def campaign_panel(summary: CampaignSummary, zone: tzinfo) -> Group:
    """A campaign's progress, counts, cost and timing, for `show`."""
    sendable = summary.total - summary.counts.get("skipped", 0)
    finished = summary.done - summary.counts.get("skipped", 0)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("campaign", f"{summary.name}  ({summary.id})")
    head.add_row("instance", summary.instance_id)
    status = summary.status
    if summary.halt_code:
        status += f"  [red]{summary.halt_code}[/red]: {summary.halt_message or ''}"
        if summary.paused_until:
            status += f" (until {local_time(summary.paused_until, zone)})"
    head.add_row("status", status)
    head.add_row("progress", f"{finished}/{sendable} done")
    head.add_row("", ProgressBar(total=max(sendable, 1), completed=finished, width=40))
    cost = f"{summary.cost_total} {summary.currency or ''}".strip()
    head.add_row("cost", cost)
    if summary.scheduled_at:
        head.add_row("scheduled", local_time(summary.scheduled_at, zone))
    head.add_row("started", local_time(summary.started_at, zone))
    head.add_row("finished", local_time(summary.finished_at, zone))
    rate = _rate(summary)
    if rate is not None:
        head.add_row("rate", f"{rate:.1f} messages/s")
        left = summary.counts.get("pending", 0) + summary.counts.get("sending", 0)
        if summary.status == "running" and left and rate > 0:
            head.add_row("time left", f"about {_duration(left / rate)}")
    counts = Table(title="messages by status", title_justify="left")
    counts.add_column("status")
    counts.add_column("count", justify="right")
    for name in STATUS_ORDER:
        if summary.counts.get(name):
            counts.add_row(name, str(summary.counts[name]))
    counts.add_row("[bold]total[/bold]", f"[bold]{summary.total}[/bold]")
    return Group(head, counts)


def _rate(summary: CampaignSummary) -> float | None:
    if summary.started_at is None:
        return None
    end = summary.finished_at or datetime.now(UTC)
    seconds = (end - summary.started_at).total_seconds()
    done = summary.done - summary.counts.get("skipped", 0)
    return done / seconds if seconds > 0 else None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def print_campaign(summary: CampaignSummary, zone: tzinfo, console: Console | None = None) -> None:
    """Print `show`'s human view."""
    (console or Console()).print(campaign_panel(summary, zone))
