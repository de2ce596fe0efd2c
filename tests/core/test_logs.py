"""What the log shows (the entry point's `setup_logging`, as `kullm` configures it): JSON
lines with millisecond UTC timestamps and the job / conversation / platform of a real job,
never the user's text at INFO or above, and no request body of a bad Slack signature."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from bots.slack import SlackBot
from kullm.logs import QUIET, setup_logging
from kullm_core import logctx
from kullm_core.client import CoreClient
from kullm_core.settings import Settings
from kullm_core.wire import Job
from kullm_core.worker import Worker
from tests.core.helpers import CONV, ask
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.slack.conftest import TEST_TUNING, slack_settings

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The process's log as `kullm` configures it (JSON, INFO), into a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in QUIET})
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # restored afterwards
    buf = io.StringIO()
    setup_logging("INFO", "json", stream=buf)
    yield buf
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    from transformers.utils import logging as tf_logging

    tf_logging.enable_progress_bar()
    tf_logging.disable_propagation()
    tf_logging.enable_default_handler()


def parsed(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


async def test_json_lines_of_a_real_job_carry_its_ids_and_never_its_text(
    log_lines: io.StringIO, client: CoreClient, worker: Worker
) -> None:
    question = "제 비밀번호는 고양이123 입니다"
    job_id = Job.id_for("log-1")
    # As an adapter does in its per-message task; the worker binds its own job session.
    with logctx.bound(platform=CONV.platform, conversation=CONV.key, job_id=job_id):
        done = await ask(client, question, "log-1")
    lines = parsed(log_lines)
    assert lines and all(TS.match(x["ts"]) for x in lines)
    assert all({"ts", "level", "logger", "message"} <= x.keys() for x in lines)
    about_job = [x for x in lines if job_id in x["message"]]
    assert {"kullm_core.client", "kullm_core.session"} <= {x["logger"] for x in about_job}
    for x in about_job:  # every line about the job says which job, conversation, platform
        assert (x.get("job_id"), x.get("conversation"), x.get("platform")) == (
            job_id, CONV.key, CONV.platform), x
    shown = log_lines.getvalue()
    assert question not in shown and "고양이123" not in shown
    assert done.text.strip() and done.text.strip()[:12] not in shown


async def test_context_fields_stay_in_the_task_that_bound_them(log_lines: io.StringIO) -> None:
    log = logging.getLogger("tests.logctx")

    async def job(name: str) -> None:
        logctx.bind(job_id=name, platform="telegram")
        await asyncio.sleep(0)
        log.info("working on %s", name)

    async def serves_many_jobs() -> None:
        log.info("lane")

    await asyncio.gather(job("a"), job("b"))
    log.info("outside")
    with logctx.bound(job_id="c", platform="telegram"):  # a long-lived task started by job c
        await asyncio.create_task(serves_many_jobs(), context=logctx.fresh(platform="telegram"))
    by_message = {x["message"]: x for x in parsed(log_lines)}
    assert by_message["working on a"]["job_id"] == "a"
    assert by_message["working on b"]["job_id"] == "b"
    assert "job_id" not in by_message["outside"] and "platform" not in by_message["outside"]
    assert "job_id" not in by_message["lane"] and by_message["lane"]["platform"] == "telegram"


async def test_a_bad_slack_signature_does_not_put_the_body_in_the_log(
    log_lines: io.StringIO, settings: Settings, client: CoreClient
) -> None:
    secret_text = "외부인의 비밀 메시지 XYZZY-42"
    async with FakeSlack(mode="http") as fake, aiohttp.ClientSession() as session:
        bot = SlackBot(slack_settings(settings, fake), client, TEST_TUNING)
        stop = asyncio.Event()
        task = asyncio.create_task(bot.run(stop))
        try:
            await asyncio.wait_for(bot.ready.wait(), 20)
            url = f"http://127.0.0.1:{bot.http_port}/slack/events"
            body = json.dumps(fake.event_body({
                "type": "app_mention", "user": "U0EVE", "text": f"<@U0KULLMBOT> {secret_text}",
                "ts": f"{time.time():.6f}", "channel": "C0GENERAL", "team": TEAM}))
            bad = {**fake.sign(body), "X-Slack-Signature": "v0=" + "0" * 64}
            async with session.post(url, data=body, headers={
                    "Content-Type": "application/json", **bad}) as resp:
                assert resp.status == 401
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    shown = log_lines.getvalue()
    assert "slack: ready" in shown  # the adapter's own INFO lines are there
    assert "XYZZY" not in shown and "비밀" not in shown
