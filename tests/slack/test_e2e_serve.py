"""`kullm serve` in one process: embedded Valkey, worker (tiny model) and the Slack adapter in
Socket Mode, answering a channel mention in its thread through the fake Slack."""

from __future__ import annotations

from pathlib import Path

import pytest

from kullm_core.wire import DoneEvent
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.serve import running_serve, serve_env, stored_turns
from tests.slack.helpers import visible

pytestmark = pytest.mark.slow


async def test_serve_answers_a_slack_mention_with_everything_in_one_process(
    fake: FakeSlack, tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = serve_env(
        tmp_path / "d", tiny_model_dir,
        SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
        KULLM_SLACK__BASE_URL=fake.api_url, KULLM_SLACK__MODE="socket",
        KULLM_GENERATION__MAX_NEW_TOKENS="16", KULLM_QUEUE__SHUTDOWN_GRACE_S="5",
    )
    with running_serve(env) as serve:
        assert "slack" in serve.running and "worker" in serve.running
        await fake.wait_for(fake.connected, 60, "a socket mode connection")
        msg = await fake.user_message("한 프로세스로 답해 주세요")
        await fake.wait_for(
            lambda: any(m.visible.endswith(")") for m in fake.bot_messages(msg.channel, msg.ts)),
            60, "the finished reply (the tiny model's 16 tokens end with the length note)",
        )
        assert await serve.stop() == 0
    assert serve.tracebacks() == [], "".join(serve.log)  # a clean stop logs no traceback
    # what serve stored survives it
    [[turn]] = (await stored_turns(tmp_path / "d", "slack:*")).values()
    done = DoneEvent(text=turn.assistant, finish_reason=turn.finish_reason)  # type: ignore[arg-type]
    [reply] = fake.bot_messages(msg.channel, msg.ts)
    assert turn.user == "한 프로세스로 답해 주세요" and reply.visible == visible(done)
    assert not fake.violations
