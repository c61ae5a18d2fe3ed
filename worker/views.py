"""Human renderings of ops data (Rich); JSON output never goes through here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from worker.reports import CampaignSummary, DeadLetterEntry
from worker.suppressions import Suppressed

STATUS_ORDER = ("sent", "pending", "sending", "failed", "unknown", "dead", "skipped", "cancelled")


def local_time(value: datetime | None, zone: tzinfo) -> str:
    """A stored UTC time in the operator's zone, or a dash."""
    if value is None:
        return "—"
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def short_time(value: datetime | None, zone: tzinfo) -> str:
    """A stored UTC time in the operator's zone, without year, seconds or zone (for tables)."""
    return "—" if value is None else value.astimezone(zone).strftime("%m-%d %H:%M")


def campaign_panel(summary: CampaignSummary, zone: tzinfo) -> Group:
    """A campaign's progress, counts, cost and timing, for `show`."""
    finished, sendable = progress(summary)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("campaign", f"{escape(summary.name)}  ({summary.id})")
    head.add_row("instance", escape(summary.instance_id))
    head.add_row("status", summary.status)
    halt = halt_text(summary, zone)
    if halt:
        head.add_row("halt reason", halt)
    head.add_row("progress", f"{finished}/{sendable} done")
    head.add_row("", ProgressBar(total=max(sendable, 1), completed=finished, width=40))
    head.add_row("cost", cost_text(summary))
    if summary.scheduled_at:
        head.add_row("scheduled", local_time(summary.scheduled_at, zone))
    head.add_row("started", local_time(summary.started_at, zone))
    head.add_row("finished", local_time(summary.finished_at, zone))
    rate = _rate(summary)
    if rate is not None:
        head.add_row("rate", f"{rate:.1f} messages/s")
    left = time_left(summary)
    if left is not None:
        head.add_row("time left", left)
    counts = Table(title="messages by status", title_justify="left")
    counts.add_column("status")
    counts.add_column("count", justify="right")
    for name in STATUS_ORDER:
        if summary.counts.get(name):
            counts.add_row(name, str(summary.counts[name]))
    counts.add_row("[bold]total[/bold]", f"[bold]{summary.total}[/bold]")
    return Group(head, counts)


def progress(summary: CampaignSummary) -> tuple[int, int]:
    """(finished, to send): skipped recipients were never to be sent, so they count in neither."""
    skipped = summary.counts.get("skipped", 0)
    return summary.done - skipped, summary.total - skipped


def halt_text(summary: CampaignSummary, zone: tzinfo) -> str:
    """Why the campaign stopped itself (UNAUTHORIZED, quota, ...), or an empty string."""
    if not summary.halt_code:
        return ""
    text = f"[red]{escape(summary.halt_code)}[/red]"
    if summary.halt_message:
        text += f": {escape(summary.halt_message)}"
    if summary.paused_until:
        text += f" (until {local_time(summary.paused_until, zone)})"
    return text


def money(value: Decimal | str, currency: str | None) -> str:
    """An amount for people: at least two decimals, no trailing zeros beyond, and its currency."""
    amount = Decimal(value).normalize()
    if amount.as_tuple().exponent > -2:  # type: ignore[operator]
        amount = amount.quantize(Decimal("0.01"))
    return f"{amount:,f} {currency or ''}".strip()


def cost_text(summary: CampaignSummary) -> str:
    """The total cost with its currency."""
    return money(summary.cost_total, summary.currency)


def time_left(summary: CampaignSummary) -> str | None:
    """An estimate for a running campaign at its rate so far, or None."""
    rate = _rate(summary)
    left = summary.counts.get("pending", 0) + summary.counts.get("sending", 0)
    if summary.status != "running" or not left or not rate:
        return None
    return f"about {_duration(left / rate)}"


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


def campaigns_table(summaries: Iterable[CampaignSummary], zone: tzinfo) -> Table:
    """`campaigns`: one row per campaign with its progress bar, counts, cost and timing."""
    now = datetime.now(UTC).astimezone(zone)
    table = Table(title=f"campaigns (times in {now.strftime('%Z')})", title_justify="left")
    for name, justify in (
        ("id", "left"),
        ("name", "left"),
        ("status", "left"),
        ("progress", "left"),
        ("done", "right"),
        ("counts", "left"),
        ("cost", "right"),
        ("rate", "right"),
        ("time left", "right"),
        ("started", "left"),
        ("finished", "left"),
    ):
        # Ids, times, counts and amounts are read whole; only the name may wrap.
        wrap = name == "name"
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=not wrap,
            min_width=12 if wrap else None,
        )
    for s in summaries:
        finished, sendable = progress(s)
        status = s.status + (f"\n{halt_text(s, zone)}" if s.halt_code else "")
        rate = _rate(s)
        counts = "\n".join(f"{n} {s.counts[n]}" for n in STATUS_ORDER if s.counts.get(n))
        table.add_row(
            str(s.id),
            escape(s.name),
            status,
            ProgressBar(total=max(sendable, 1), completed=finished, width=12),
            f"{finished}/{sendable}",
            counts or "—",
            cost_text(s),
            "—" if rate is None else f"{rate:.1f}/s",
            time_left(s) or "—",
            short_time(s.started_at, zone),
            short_time(s.finished_at, zone),
        )
    return table


def messages_table(rows: Iterable[dict[str, Any]], zone: tzinfo, title: str) -> Table:
    """`messages`: delivery records (as reports.iter_messages gives them)."""
    table = Table(title=title, title_justify="left")
    for name in ("id", "phone", "status", "attempts", "provider id", "cost", "error", "sent at"):
        justify = "right" if name in ("id", "attempts", "cost") else "left"
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        cost = money(row["cost"], row["currency"]) if row["cost"] else "—"
        error = " ".join(p for p in (row["error_code"], row["error_message"]) if p)
        sent_at = datetime.fromisoformat(row["sent_at"]) if row["sent_at"] else None
        table.add_row(
            str(row["id"]),
            row["phone"],
            row["status"],
            str(row["attempts"]),
            escape(row["provider_message_id"] or "—"),
            cost,
            escape(error) or "—",
            local_time(sent_at, zone),
        )
    return table


def dead_letters_table(entries: Iterable[DeadLetterEntry], zone: tzinfo) -> Table:
    """`dead-letters`: one row per dead-lettered send."""
    table = Table(title="dead letters", title_justify="left")
    for name in ("id", "campaign", "message", "phone", "reason", "dead since", "replayed"):
        table.add_column(name)
    for e in entries:
        reason = escape(e.reason_code + (f": {e.reason_message}" if e.reason_message else ""))
        table.add_row(
            str(e.id),
            str(e.campaign_id),
            str(e.message_id),
            e.phone,
            reason,
            local_time(e.created_at, zone),
            local_time(e.replayed_at, zone),
        )
    return table


def suppressions_table(entries: Iterable[Suppressed], zone: tzinfo) -> Table:
    """`suppress list`: the opt-out list."""
    table = Table(title="suppressed numbers", title_justify="left")
    for name in ("phone", "reason", "since"):
        table.add_column(name)
    for e in entries:
        table.add_row(e.phone, escape(e.reason or "—"), local_time(e.created_at, zone))
    return table
