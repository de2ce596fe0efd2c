"""`kullm stats`, `kullm export --feedback`, `kullm admin forget|usage|quota`: the helpdesk
from the command line, against the Redis the settings name (or the embedded server of a
running `kullm serve`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from kullm.runtime import open_redis
from kullm_core.client import CoreClient
from kullm_core.helpdesk.stats import StatsReader, as_json, days_back, table
from kullm_core.limits import PLATFORM_TAGS
from kullm_core.settings import Settings
from kullm_core.wire import UserRef

COMMANDS = ("stats", "export", "admin")
_PLATFORMS = {tag: platform for platform, tag in PLATFORM_TAGS.items()}

Add = Callable[[str, str, str], argparse.ArgumentParser]


def add_parsers(add: Add) -> None:
    s = add("stats", "usage and answer statistics per day and channel",
            "Per day and channel: questions, answered, failed, stopped, 👍, 👎, escalations, "
            "resolved, median and p95 time to the first visible text, prompt and generated "
            "tokens, distinct users. `*` rows sum a day's channels.")
    s.add_argument("--days", type=int, default=7, help="the last N days (UTC; default 7)")
    s.add_argument("--channel", help="one channel (qualified: slack:T1:C1, tg:-100123)")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    e = add("export", "export rated answers for review",
            "Write every rated exchange (question, answer, rating, comment) as JSON lines.")
    e.add_argument("--feedback", type=Path, required=True, metavar="FILE.jsonl",
                   help="output file ('-' for standard output)")
    a = add("admin", "privacy requests and per-user usage",
            "forget USER: erase everything stored of a user (a request made by email). "
            "usage USER: their tokens today and limits. quota USER N|default: set their "
            "daily token limit (0 = unlimited). USER is qualified: tg:123, slack:T1:U1.")
    a.add_argument("action", choices=["forget", "usage", "quota"])
    a.add_argument("user", help="qualified user id: tg:123, slack:T1:U1")
    a.add_argument("value", nargs="?", help="quota: tokens per day, or 'default'")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with open_redis(settings, embedded="reuse_or_start") as redis, CoreClient(
            redis, settings) as client:
        if args.cmd == "stats":
            rows = await StatsReader(client.redis, client.keys).rows(
                days_back(max(1, args.days)), args.channel)
            print(as_json(rows) if args.json else table(rows))
            return 0
        if args.cmd == "export":
            return await _export(client, args.feedback)
        return await _admin(client, args.action, args.user, args.value)


def split_user(user: str) -> tuple[str, str] | None:
    """`tg:123` -> (telegram, 123); `slack:T1:U1` -> (slack, U1); None if not readable."""
    tag, _, rest = user.partition(":")
    platform = _PLATFORMS.get(tag)
    if platform is None or not rest or rest.startswith("@"):
        return None
    return platform, rest.rsplit(":", 1)[-1]


async def _admin(client: CoreClient, action: str, user: str, value: str | None) -> int:
    who = split_user(user)
    if who is None:
        print(f"kullm: error: {user!r} is not a qualified user id (tg:123, slack:T1:U1; "
              "a Telegram @username cannot be erased by name)", file=sys.stderr)
        return 2
    platform, user_id = who
    if action == "forget":
        turns = await client.forget(platform, user_id)
        print(f"forgot {user}: {turns} turn(s) and their helpdesk records")
        return 0
    lim, owner = client.limiter, f"{platform}:{user_id}"
    if action == "quota":
        if value is None or not (value == "default" or value.isdigit()):
            print("kullm: error: quota needs a number of tokens per day or 'default'",
                  file=sys.stderr)
            return 2
        await lim.set_daily_limit(owner, None if value == "default" else int(value))
    use = await lim.usage(UserRef(platform=platform, id=user_id))
    limit = f" of {use.daily_limit}" if use.daily_limit else " (no daily limit)"
    rate = (f"{use.requests_last_minute} of {use.requests_per_minute}"
            if use.requests_per_minute else f"{use.requests_last_minute} (no limit)")
    print(f"{user}: {use.used_today} token(s) today{limit}; requests in the last minute: {rate}")
    return 0


async def _export(client: CoreClient, out: Path) -> int:
    lines: list[str] = []
    async for ex in client.helpdesk.exchanges():
        ratings = await client.helpdesk.feedback(ex.job_id)
        if not ratings:
            continue
        turns = await client.history(ex.conversation)
        turn = next((x for x in reversed(turns) if x.job_id == ex.job_id), None)
        for fb in ratings:
            lines.append(json.dumps({
                "job_id": ex.job_id, "channel": ex.channel, "asked_at": ex.asked_at,
                "question": turn.user if turn else None,
                "answer": turn.assistant if turn else None,
                "rater": fb.rater, "rating": fb.rating, "comment": fb.comment,
                "rated_at": fb.at}, ensure_ascii=False))
    lines.sort()
    text = "".join(f"{line}\n" for line in lines)
    if str(out) == "-":
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(out.write_text, text, encoding="utf-8")
        print(f"{len(lines)} rated exchange(s) written to {out}", file=sys.stderr)
    return 0
