"""Invalid Unicode from Telegram (a lone surrogate in the update's JSON, `\\ud800`) is
cleaned at the edge: the user gets an answer, not "internal error"."""

from __future__ import annotations

import json
from typing import Any

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.wire import ConversationRef
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import ALICE, wait_reply

LONE = json.loads('"서울 \\ud800 날씨 \\udc00?"')


async def test_a_lone_surrogate_gets_an_answer_not_an_internal_error(
    tg: FakeTelegram, make_bot: MakeBot, worker: Any, client: CoreClient
) -> None:
    async with make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, LONE)
        _, shown = await wait_reply(tg, client, msg)
    assert shown and t("error.internal", "ko") not in [m.text for m in shown]
    conv = ConversationRef(platform="telegram", chat=str(ALICE.id), user=str(ALICE.id))
    assert [h.user for h in await client.history(conv)] == ["서울 \ufffd 날씨 \ufffd?"]
