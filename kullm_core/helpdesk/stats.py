"""Usage and answer statistics per day and channel, read back from what
`HelpdeskStore` counted: the summary `kullm stats`, `/kullm stats`, `/stats` and the App Home
show."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

from redis.asyncio import Redis

from kullm_core.keys import Keys
from kullm_core.redis_text import as_str

COUNTS = ("questions", "answered", "failed", "stopped", "refused", "up", "down",
          "escalations", "resolved", "prompt_tokens", "completion_tokens")


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) by the nearest-rank method; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class StatsRow:
    """One day in one channel (or `*`: every channel of the day)."""

    day: str
    channel: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    users: int = 0
    ttfv_median_s: float | None = None
    ttfv_p95_s: float | None = None
    first_human_median_s: float | None = None
    resolve_median_s: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def days_back(n: int, now: float | None = None) -> list[str]:
    """The last `n` UTC days, oldest first, as ``YYYYMMDD``."""
    now = time.time() if now is None else now
    return [time.strftime("%Y%m%d", time.gmtime(now - 86400 * i)) for i in range(n - 1, -1, -1)]


class StatsReader:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    async def rows(self, days: list[str], channel: str | None = None,
                   *, total: bool = True) -> list[StatsRow]:
        """Per day and channel, then (`total`) one `*` row per day over every channel.
        `channel` keeps only that channel."""
        out: list[StatsRow] = []
        for day in days:
            raw = await self.r.hgetall(self.keys.stats(day))  # type: ignore[misc]
            per: dict[str, StatsRow] = {}
            for key, value in raw.items():
                name = as_str(key)
                chan, _, metric = name.rpartition("|")
                if channel is not None and chan != channel:
                    continue
                row = per.setdefault(chan, StatsRow(day, chan))
                row.counts[metric] = row.counts.get(metric, 0) + int(value)
            rows = [per[c] for c in sorted(per)]
            for row in rows:
                await self._fill(row, [row.channel])
            if total and len(rows) > 1:
                all_row = StatsRow(day, "*")
                for row in rows:
                    for metric, n in row.counts.items():
                        all_row.counts[metric] = all_row.counts.get(metric, 0) + n
                await self._fill(all_row, [r.channel for r in rows])
                rows.append(all_row)
            out.extend(rows)
        return out

    async def _fill(self, row: StatsRow, channels: list[str]) -> None:
        k = self.keys
        row.users = int(await self.r.pfcount(*(k.stats_users(row.day, c) for c in channels)))
        ttfv = await self._samples([k.stats_ttfv(row.day, c) for c in channels])
        row.ttfv_median_s, row.ttfv_p95_s = percentile(ttfv, 0.5), percentile(ttfv, 0.95)
        row.first_human_median_s = percentile(
            await self._samples([k.stats_solve(row.day, c, "first") for c in channels]), 0.5)
        row.resolve_median_s = percentile(
            await self._samples([k.stats_solve(row.day, c, "resolved") for c in channels]), 0.5)

    async def _samples(self, keys: list[str]) -> list[float]:
        values: list[float] = []
        for key in keys:
            values.extend(float(v) for v in await self.r.lrange(key, 0, -1))  # type: ignore[misc]
        return values


_COLUMNS = (("day", 8), ("channel", 22), ("questions", 5), ("answered", 5), ("failed", 5),
            ("stopped", 5), ("up", 4), ("down", 4), ("escalations", 4), ("resolved", 4),
            ("ttfv_med", 8), ("ttfv_p95", 8), ("tok_in", 8), ("tok_out", 8), ("users", 5))
_HEAD = {"questions": "asked", "answered": "ok", "failed": "fail", "stopped": "stop",
         "escalations": "esc", "resolved": "res"}


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def _cells(row: StatsRow) -> dict[str, str]:
    c = row.counts
    cells = {name: str(c.get(name, 0)) for name, _ in _COLUMNS if name in c}
    cells.update(day=row.day, channel=row.channel, ttfv_med=_seconds(row.ttfv_median_s),
                 ttfv_p95=_seconds(row.ttfv_p95_s), tok_in=str(c.get("prompt_tokens", 0)),
                 tok_out=str(c.get("completion_tokens", 0)), users=str(row.users))
    return cells


def table(rows: list[StatsRow]) -> str:
    """A fixed-width table (monospace: the terminal, a Slack code block, Telegram <pre>)."""
    if not rows:
        return "(no activity)"
    lines = [" ".join(_HEAD.get(n, n).rjust(w) if n not in ("day", "channel")
                      else _HEAD.get(n, n).ljust(w) for n, w in _COLUMNS)]
    for row in rows:
        cells = _cells(row)
        lines.append(" ".join(cells[n][:w].ljust(w) if n in ("day", "channel")
                              else cells[n].rjust(w) for n, w in _COLUMNS))
    return "\n".join(lines)


def summary_text(rows: list[StatsRow]) -> str:
    """A few lines for a chat: the `*` totals (or the only row) of each day."""
    lines = []
    for row in rows:
        if row.channel != "*" and any(r.day == row.day and r.channel == "*" for r in rows):
            continue
        c = row.counts
        lines.append(f"{row.day}: {c['questions']} asked, {c['answered']} answered, "
                     f"{c['failed']} failed, {c['stopped']} stopped · 👍 {c['up']} 👎 {c['down']}"
                     f" · escalated {c['escalations']}, resolved {c['resolved']}"
                     f" · first text median {_seconds(row.ttfv_median_s)}"
                     f" (p95 {_seconds(row.ttfv_p95_s)}) · tokens {c['prompt_tokens']}+"
                     f"{c['completion_tokens']} · {row.users} users")
    return "\n".join(lines) or "(no activity)"


def as_json(rows: list[StatsRow]) -> str:
    return json.dumps([r.as_dict() for r in rows], ensure_ascii=False, indent=2)
