"""`kullm serve` in one process: embedded Valkey, worker (tiny model) and the Telegram adapter,
answering a private chat through the fake Bot API."""

from __future__ import annotations

from pathlib import Path

import pytest

from kullm_core.wire import DoneEvent
from tests.fakes.telegram_api import TOKEN, FakeTelegram
from tests.serve import running_serve, serve_env, stored_turns
from tests.telegram.helpers import ALICE, expected_texts, reply_texts

pytestmark = pytest.mark.slow


async def test_serve_answers_a_telegram_dm_with_everything_in_one_process(
    tg: FakeTelegram, tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = serve_env(
        tmp_path / "d", tiny_model_dir,
        TELEGRAM_BOT_TOKEN=TOKEN, KULLM_TELEGRAM__BASE_URL=tg.base_url,
        KULLM_TELEGRAM__MIN_EDIT_INTERVAL_S="0.25", KULLM_TELEGRAM__GROUP_MESSAGES_PER_MINUTE="120",
        KULLM_GENERATION__MAX_NEW_TOKENS="16", PTB_TIMEDELTA="1",
        KULLM_QUEUE__SHUTDOWN_GRACE_S="5",
    )
    with running_serve(env) as serve:
        assert "telegram" in serve.running and "worker" in serve.running
        await tg.wait_for(lambda: any(c.method == "getUpdates" for c in tg.calls), 60)
        msg = await tg.send_text(ALICE.id, ALICE, "안녕하세요, 한 프로세스로 답해 주세요")
        await tg.wait_for(lambda: bool(reply_texts(tg, msg)) and any(
            c.method == "sendMessage" for c in tg.calls), 60)
        assert await serve.stop() == 0
    assert serve.tracebacks() == [], "".join(serve.log)  # a clean stop logs no traceback
    # what serve stored survives it
    [[turn]] = (await stored_turns(tmp_path / "d", "telegram:*")).values()
    done = DoneEvent(text=turn.assistant, finish_reason=turn.finish_reason)  # type: ignore[arg-type]
    assert turn.user == "안녕하세요, 한 프로세스로 답해 주세요"
    assert reply_texts(tg, msg) == expected_texts(done)
