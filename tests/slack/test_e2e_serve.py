"""`kullm serve` in one process: embedded Valkey, worker (tiny model) and the Slack adapter in
Socket Mode, answering a channel mention in its thread through the fake Slack."""

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
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.slack.helpers import visible

pytestmark = pytest.mark.slow


async def test_serve_answers_a_slack_mention_with_everything_in_one_process(
    fake: FakeSlack, tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KULLM_", "TELEGRAM_", "SLACK_"))}
    env.update({
        "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN,
        "KULLM_SLACK__BASE_URL": fake.api_url, "KULLM_SLACK__MODE": "socket",
        "KULLM_DATA_DIR": str(tmp_path / "d"), "KULLM_MODEL__PATH": str(tiny_model_dir),
        "KULLM_GENERATION__MAX_NEW_TOKENS": "16", "KULLM_QUEUE__SHUTDOWN_GRACE_S": "5",
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
        assert "slack" in running and "worker" in running
        await fake.wait_for(fake.connected, 60, "a socket mode connection")
        msg = await fake.user_message("한 프로세스로 답해 주세요")
        await fake.wait_for(
            lambda: any(m.visible.endswith(")") for m in fake.bot_messages(msg.channel, msg.ts)),
            60, "the finished reply (the tiny model's 16 tokens end with the length note)",
        )
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        serve.kill()
    async with EmbeddedRedis(tmp_path / "d") as server:  # what serve stored survives it
        r = Redis.from_url(server.url)
        [key] = [k async for k in r.scan_iter(match="kullm:conv:slack:*")]
        [raw] = await r.lrange(key, 0, -1)
        await r.aclose()
    turn = parse_turn(raw)
    done = DoneEvent(text=turn.assistant, finish_reason=turn.finish_reason)  # type: ignore[arg-type]
    [reply] = fake.bot_messages(msg.channel, msg.ts)
    assert turn.user == "한 프로세스로 답해 주세요" and reply.visible == visible(done)
    assert not fake.violations
