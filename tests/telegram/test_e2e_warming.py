"""While the worker still loads its model (`kullm serve` just started), a user is told the bot
is warming up instead of silence; the answer replaces that note once the model is there."""

from __future__ import annotations

from typing import Any

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.keys import Keys
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import ALICE, wait_reply


async def test_a_question_during_the_model_load_is_told_warming_up_then_answered(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    warming = Keys(client.settings.redis.prefix).warming
    await client.redis.set(warming, "1", ex=60)  # what `kullm serve` holds while loading
    async with make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "안녕하세요")
        note = t("warming_up", "ko")
        await tg.wait_for(lambda: any(
            note in v for m in tg.replies_to(ALICE.id, msg.message_id) for v in m.versions), 30)
        await client.redis.delete(warming)  # the model is loaded: the worker starts
        async with make_worker():
            done, shown = await wait_reply(tg, client, msg)
    assert shown[0].versions[0] == note  # the note was the placeholder...
    assert shown[0].text != note and done.text  # ...that the answer replaced
