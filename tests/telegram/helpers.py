"""What a Telegram user sees, and the worker's side of the same reply."""

from __future__ import annotations

import asyncio
import socket

from bots.telegram.render import final_pieces, plain_pieces
from kullm_core.client import CoreClient
from kullm_core.texts import finish_note, lang_of
from kullm_core.wire import DoneEvent, Event, Job
from tests.fakes.telegram_api import BOT_ID, FakeTelegram, Msg, User

ALICE = User(1001, "Alice", "alice", "ko")
BOB = User(1002, "Bob", "bob", "en")
CAROL = User(1003, "Carol", "carol", "ko")
GROUP = -100500


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a webhook listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_of(msg: Msg) -> str:
    return Job.id_for(f"tg:{BOT_ID}:{msg.chat.id}:{msg.message_id}")


async def events_of(client: CoreClient, msg: Msg, within: float = 60) -> list[Event]:
    async def _run() -> list[Event]:
        return [e async for _, e in client.events(job_of(msg))]

    return await asyncio.wait_for(_run(), within)


async def done_of(client: CoreClient, msg: Msg, within: float = 60) -> DoneEvent:
    events = await events_of(client, msg, within)
    last = events[-1]
    assert isinstance(last, DoneEvent), last
    return last


def expected_texts(done: DoneEvent, lang: str = "ko", plain: bool = False) -> list[str]:
    """The messages a user should end up seeing for a finished reply."""
    note = finish_note(done.finish_reason, lang)
    if not done.text.strip():
        return [note or ("(빈 답변)" if lang == "ko" else "(empty answer)")]
    pieces = (plain_pieces if plain else final_pieces)(done.text, note)
    return [p.text for p in pieces]


def reply_texts(tg: FakeTelegram, msg: Msg) -> list[str]:
    return [m.text for m in tg.replies_to(msg.chat.id, msg.message_id)]


async def wait_reply(
    tg: FakeTelegram, client: CoreClient, msg: Msg, plain: bool = False, within: float = 60,
) -> tuple[DoneEvent, list[Msg]]:
    """Wait until the user sees the whole reply to `msg` (in the asker's language); return
    the worker's done event and the bot's messages that show it."""
    done = await done_of(client, msg, within)
    want = expected_texts(done, lang_of(msg.sender.language_code), plain)
    await tg.wait_for(lambda: reply_texts(tg, msg) == want, within)
    return done, tg.replies_to(msg.chat.id, msg.message_id)
