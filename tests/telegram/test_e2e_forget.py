"""/forget through the real PTB client: after the user confirms, no key in Redis holds
their text, and only documented ones (no text) still name them."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from tests.core.test_forget import everything
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import ALICE, BOB, GROUP, reply_texts, wait_reply

SECRET = "앨리스만아는이야기"
# Kept on purpose, none with text: exactly-once markers, update dedupe, the send budget, and
# the helpdesk's daily stats (`kullm_core/keys.py`: counts and timings per chat, and a DM's
# chat id is the user's id).
KEPT = (b":dedupe:", b":done:", b":seen:", b":budget:", b":cancel:", b":rate:", b":quota:",
        b":hd:stats:", b":hd:ttfv:", b":hd:users:")


def names_alice(key: bytes, dump: bytes) -> bool:
    blob = key + b" " + dump
    return SECRET.encode() in blob or str(ALICE.id).encode() in blob or b"alice" in blob


async def test_forget_leaves_no_key_with_the_users_text(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient, redis: Redis
) -> None:
    async with make_bot(settings=None):
        await wait_reply(tg, client, await tg.send_text(ALICE.id, ALICE, f"비밀: {SECRET}"))
        await wait_reply(tg, client, await tg.mention(GROUP, ALICE, f"그룹에서 {SECRET}"))
        await wait_reply(tg, client, await tg.mention(GROUP, BOB, "밥의 질문"))
        ask = await tg.command(ALICE.id, ALICE, "/forget")
        await tg.wait_for(lambda: reply_texts(tg, ask))
        (confirm,) = tg.replies_to(ALICE.id, ask.message_id)
        yes = confirm.reply_markup["inline_keyboard"][0][0]  # type: ignore[index]
        await tg.press_button(confirm, ALICE, yes["callback_data"])
        await tg.wait_for(lambda: confirm.text == t("forgot", "ko", turns=2))
    after = await everything(redis)
    left = [k for k, v in after.items() if names_alice(k, v)]
    assert [k for k in left if not any(part in k for part in KEPT)] == []
    assert not [k for k, v in after.items() if SECRET.encode() in k + v]
    assert any(b"\xeb\xb0\xa5" in v for v in after.values())  # Bob's turn ("밥") is kept
