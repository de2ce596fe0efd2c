"""`kullm stats`, `kullm export --feedback` and `kullm admin` read back what happened
through the real pipeline (worker, deliveries, ratings), as separate processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kullm.helpdesk_cli import split_user
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.helpdesk.service import Helpdesk
from kullm_core.replies import Deliveries, DeliveryTuning
from kullm_core.settings import Settings
from kullm_core.wire import ConversationRef, ReplyRecord, UserRef
from tests.core.replies_chat import Chat, RecordingPlatform
from tests.test_cli import _env, _kullm

pytestmark = pytest.mark.slow

TUNING = DeliveryTuning(lease_s=1.0, renew_every_s=0.1, rescan_every_s=0.2, tick_s=0.02,
                        placeholder_delay_s=0.0, busy_retry_s=0.05, state_check_s=0.3,
                        grace_s=10.0, redis_retry_max_s=0.2)
CONV = ConversationRef(platform="slack", workspace="T1", chat="C1", thread="9.9")
ASKER = UserRef(platform="slack", id="U1", name="kim")
RATER = UserRef(platform="slack", id="U2", name="lee")


def test_qualified_user_ids() -> None:
    assert split_user("tg:123") == ("telegram", "123")
    assert split_user("slack:T1:U1") == ("slack", "U1")
    assert split_user("tg:@kim") is None and split_user("nope") is None


async def test_stats_export_and_forget_read_back_the_pipeline(
    client: CoreClient, make_worker: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = ScriptedEngine(lambda _r: "VPN은 설정 메뉴에서 켭니다.", chunk_chars=3, delay_s=0.01)
    rec = ReplyRecord.ask(CONV, ASKER, "cli-1", "VPN은 어떻게 켜나요?", {})
    async with make_worker(engine=engine), Deliveries(
            client, RecordingPlatform(Chat()), TUNING, owner="a") as d:
        await d.deliver(rec)
        await d.wait(rec.job_id)
    hd = Helpdesk(client)
    await hd.rate(rec.job_id, RATER, "T1", "up")
    await hd.rate(rec.job_id, RATER, "T1", "down")
    await hd.comment(rec.job_id, RATER, "T1", "메뉴 이름이 달라요")
    env = _env(settings)

    code, out, err = await _kullm(env, "stats", "--json", "--days", "1")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["channel"] == "slack:T1:C1"
    assert {k: row["counts"][k] for k in ("questions", "answered", "up", "down")} == {
        "questions": 1, "answered": 1, "up": 0, "down": 1}
    assert row["users"] == 1 and row["ttfv_median_s"] is not None
    code, out, _ = await _kullm(env, "stats")
    assert code == 0 and "slack:T1:C1" in out

    export = tmp_path / "feedback.jsonl"
    code, _, err = await _kullm(env, "export", "--feedback", str(export))
    assert code == 0, err
    [line] = [json.loads(x) for x in export.read_text("utf-8").splitlines()]
    assert (line["question"], line["answer"], line["rating"], line["comment"]) == (
        "VPN은 어떻게 켜나요?", "VPN은 설정 메뉴에서 켭니다.", "down", "메뉴 이름이 달라요")

    code, out, err = await _kullm(env, "admin", "quota", "slack:T1:U1", "500")
    assert code == 0 and "of 500" in out, err
    assert await client.limiter.daily_limit("slack:U1") == 500
    code, out, err = await _kullm(env, "admin", "usage", "slack:T1:U1")
    assert code == 0 and " token(s) today of 500; requests in the last minute" in out, err
    code, _, err = await _kullm(env, "admin", "quota", "slack:T1:U1", "lots")
    assert code == 2 and "tokens per day" in err

    code, out, err = await _kullm(env, "admin", "forget", "slack:T1:U1")
    assert code == 0 and "forgot slack:T1:U1" in out, err
    assert await client.helpdesk.exchange(rec.job_id) is None
    assert await client.history(CONV) == []
    code, _, err = await _kullm(env, "admin", "forget", "tg:@kim")
    assert code == 2 and "not a qualified user id" in err
