"""Helpers for Slack tests: follow a message's job, wait for what the thread shows."""

from __future__ import annotations

import asyncio

from bots.slack.target import source_id
from kullm_core.client import CoreClient
from kullm_core.settings import Settings
from kullm_core.texts import finish_note
from kullm_core.wire import DoneEvent, ErrorEvent, Event, Job
from tests.fakes.slack_api import TEAM, FakeSlack, Message


def long_settings(settings: Settings) -> Settings:
    """Room for long scripted replies (the scripted engine yields one piece per token)."""
    gen = settings.generation.model_copy(update={"max_new_tokens": 2000})
    return settings.model_copy(update={"generation": gen})


def job_of(msg: Message) -> str:
    return Job.id_for(source_id(TEAM, msg.channel, msg.ts))


async def final_event(client: CoreClient, job_id: str, timeout: float = 60) -> Event:
    async def _last() -> Event:
        last: Event | None = None
        async for _, event in client.events(job_id):
            last = event
        assert last is not None
        return last

    return await asyncio.wait_for(_last(), timeout)


async def done_of(client: CoreClient, msg: Message, timeout: float = 60) -> DoneEvent:
    event = await final_event(client, job_of(msg), timeout)
    assert isinstance(event, DoneEvent), event
    return event


async def shows(fake: FakeSlack, channel: str, thread: str | None, text: str,
                timeout: float = 30, after: str = "") -> None:
    """Wait until the bot's messages in the thread read exactly `text`."""
    try:
        await fake.wait_for(lambda: fake.reply_text(channel, thread, after) == text, timeout,
                            f"thread {channel}/{thread} to show the reply")
    except AssertionError:
        raise AssertionError(
            f"thread shows {fake.reply_text(channel, thread, after)!r}, expected {text!r}"
        ) from None


def visible(done: DoneEvent, lang: str = "ko") -> str:
    """What the thread shows for a finished reply: the reply, then the note of a reply that
    did not end normally (cut at the length limit, stopped, timed out)."""
    note = finish_note(done.finish_reason, lang)
    return done.text + ("\n\n" + note if note else "")


async def answered(fake: FakeSlack, client: CoreClient, msg: Message,
                   thread: str | None = None, timeout: float = 60, lang: str = "ko",
                   after: str = "") -> DoneEvent:
    """The worker's reply to `msg`, once the thread shows exactly it."""
    done = await done_of(client, msg, timeout)
    if thread is None:
        thread = msg.thread_ts or (None if msg.channel.startswith("D") else msg.ts)
    await shows(fake, msg.channel, thread, visible(done, lang), timeout, after)
    return done


def error_of(event: Event) -> ErrorEvent:
    assert isinstance(event, ErrorEvent), event
    return event
