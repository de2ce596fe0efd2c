"""`kullm serve` in one process: embedded Valkey, worker (tiny model) and the Telegram adapter,
answering a private chat through the fake Bot API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from kullm_core.embedded import EmbeddedRedis
from kullm_core.wire import DoneEvent, parse_turn
from tests.fakes.telegram_api import TOKEN, FakeTelegram
from tests.telegram.helpers import ALICE, expected_texts, reply_texts

pytestmark = pytest.mark.slow


async def test_serve_answers_a_telegram_dm_with_everything_in_one_process(
    tg: FakeTelegram, tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_"))}
    env.update({
        "TELEGRAM_BOT_TOKEN": TOKEN, "KULLM_TELEGRAM__BASE_URL": tg.base_url,
        "KULLM_TELEGRAM__MIN_EDIT_INTERVAL_S": "0.25",
        "KULLM_TELEGRAM__GROUP_MESSAGES_PER_MINUTE": "120",
        "KULLM_DATA_DIR": str(tmp_path / "d"), "KULLM_MODEL__PATH": str(tiny_model_dir),
        "KULLM_GENERATION__MAX_NEW_TOKENS": "16", "PTB_TIMEDELTA": "1",
        "KULLM_QUEUE__SHUTDOWN_GRACE_S": "5",
    })
    serve = subprocess.Popen([sys.executable, "-m", "kullm.cli", "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stderr is not None
        running = ""
        for line in serve.stderr:
            if "running:" in line:
                running = line
                break
        assert "telegram" in running and "worker" in running
        await tg.wait_for(lambda: any(c.method == "getUpdates" for c in tg.calls), 60)
        msg = await tg.send_text(ALICE.id, ALICE, "안녕하세요, 한 프로세스로 답해 주세요")
        await tg.wait_for(lambda: bool(reply_texts(tg, msg)) and any(
            c.method == "sendMessage" for c in tg.calls), 60)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        serve.kill()
    async with EmbeddedRedis(tmp_path / "d") as server:  # what serve stored survives it
        r = Redis.from_url(server.url)
        [key] = [k async for k in r.scan_iter(match="kullm:conv:telegram:*")]
        [raw] = await r.lrange(key, 0, -1)
        await r.aclose()
    turn = parse_turn(raw)
    done = DoneEvent(text=turn.assistant, finish_reason=turn.finish_reason)  # type: ignore[arg-type]
    assert turn.user == "안녕하세요, 한 프로세스로 답해 주세요"
    assert reply_texts(tg, msg) == expected_texts(done)
