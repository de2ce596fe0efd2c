"""The helpdesk core (`kullm_core.helpdesk`): records, ratings, escalations, channel modes
and statistics, through real Redis and, for the recording of replies, the real worker."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.helpdesk.actions import parse_action
from kullm_core.helpdesk.channels import (
    ChannelModes,
    ModeCommandError,
    Seen,
    apply_command,
    describe,
    should_answer,
)
from kullm_core.helpdesk.service import Helpdesk
from kullm_core.helpdesk.settings import HelpdeskSettings
from kullm_core.helpdesk.stats import StatsReader, days_back, percentile, summary_text, table
from kullm_core.keys import Keys
from kullm_core.replies import Deliveries, DeliveryTuning
from kullm_core.texts import t
from kullm_core.wire import ChannelConfig, ConversationRef, Exchange, ReplyRecord, UserRef
from tests.core.replies_chat import Chat, RecordingPlatform

CONV = ConversationRef(platform="slack", workspace="T1", chat="C1", thread="1.1")
ASKER = UserRef(platform="slack", id="U1", name="asker")
RATER = UserRef(platform="slack", id="U2", name="rater", lang="en")
TUNING = DeliveryTuning(lease_s=1.0, renew_every_s=0.1, rescan_every_s=0.2, tick_s=0.02,
                        placeholder_delay_s=0.0, busy_retry_s=0.05, state_check_s=0.3,
                        grace_s=10.0, redis_retry_max_s=0.2)


def _exchange(job_id: str, outcome: str = "answered", **over: Any) -> Exchange:
    now = time.time()
    fields: dict[str, Any] = dict(
        job_id=job_id, conversation=CONV, user=ASKER, asker="slack:T1:U1",
        channel="slack:T1:C1", outcome=outcome, asked_at=now - 2, finished_at=now,
        first_visible_s=0.5, prompt_tokens=100, completion_tokens=20)
    fields.update(over)
    return Exchange(**fields)


async def test_a_reply_is_recorded_and_counted_once(client: CoreClient) -> None:
    store = client.helpdesk
    assert await store.record(_exchange("a" * 24))
    assert not await store.record(_exchange("a" * 24))  # delivered again after a restart
    got = await store.exchange("a" * 24)
    assert got is not None and got.outcome == "answered"
    [row] = await StatsReader(client.redis, client.keys).rows(days_back(1))
    assert (row.channel, row.counts["questions"], row.counts["answered"]) == (
        "slack:T1:C1", 1, 1)
    assert (row.counts["prompt_tokens"], row.counts["completion_tokens"], row.users) == (
        100, 20, 1)
    assert row.ttfv_median_s == pytest.approx(0.5)


async def test_one_rating_per_person_and_answer_the_latest_wins(client: CoreClient) -> None:
    hd = Helpdesk(client)
    job = "b" * 24
    await client.helpdesk.record(_exchange(job))
    first = await hd.rate(job, RATER, "T1", "up")
    again = await hd.rate(job, RATER, "T1", "down")
    assert first.ok and not first.ask_comment
    assert again.ok and again.ask_comment and again.text == t("hd.rated_again", "en",
                                                              rating="👎")
    assert await hd.comment(job, RATER, "T1", "  링크가 틀렸어요 ") == t("hd.comment_saved", "en")
    [fb] = await client.helpdesk.feedback(job)
    assert (fb.rater, fb.rating, fb.comment) == ("slack:T1:U2", "down", "링크가 틀렸어요")
    [row] = await StatsReader(client.redis, client.keys).rows(days_back(1))
    assert (row.counts["up"], row.counts["down"]) == (0, 1)


async def test_a_button_on_a_forgotten_answer_gets_a_short_answer(client: CoreClient) -> None:
    hd = Helpdesk(client)
    gone = await hd.rate("c" * 24, RATER, "T1", "up")
    assert (gone.ok, gone.text) == (False, t("hd.gone", "en"))
    assert await hd.comment("c" * 24, RATER, "T1", "hi") == t("hd.gone", "en")
    assert await hd.escalate(CONV, ASKER, job_id="c" * 24) == t("hd.gone", "ko")
    assert (await hd.resolve("0" * 16, RATER, "T1"))[1] == t("hd.gone", "en")


async def test_forget_removes_the_users_records_and_their_ratings_elsewhere(
    client: CoreClient
) -> None:
    hd = Helpdesk(client)
    mine, theirs = "d" * 24, "e" * 24
    await client.helpdesk.record(_exchange(mine))
    other = UserRef(platform="slack", id="U9")
    await client.helpdesk.record(_exchange(theirs, user=other, asker="slack:T1:U9"))
    await hd.rate(mine, RATER, "T1", "up")
    await hd.rate(theirs, ASKER, "T1", "down")
    await hd.rate(theirs, RATER, "T1", "up")
    handoff = await hd.escalate(CONV, ASKER)
    assert not isinstance(handoff, str)
    await client.forget("slack", "U1")
    assert await client.helpdesk.exchange(mine) is None
    assert await client.helpdesk.feedback(mine) == []
    assert [f.rater for f in await client.helpdesk.feedback(theirs)] == ["slack:T1:U2"]
    assert await client.helpdesk.escalation(CONV) is None
    assert await client.helpdesk.exchange(theirs) is not None


async def test_escalation_silences_the_bot_until_a_responder_resolves(
    client: CoreClient
) -> None:
    hd = Helpdesk(client)
    channel = "slack:T1:C1"
    await hd.modes.set(channel, ChannelConfig(mode="all", responders=["U7", "S55"]))
    msg = Seen(dm=False, mentioned=True, top_level=False, text="아직 안 돼요")
    assert await hd.should_answer(CONV, ASKER, msg)
    handoff = await hd.escalate(CONV, ASKER)
    assert not isinstance(handoff, str) and handoff.opened
    assert handoff.config.responders == ["U7", "S55"]
    again = await hd.escalate(CONV, ASKER)
    assert not isinstance(again, str) and not again.opened
    assert not await hd.should_answer(CONV, ASKER, msg)
    responder = UserRef(platform="slack", id="U7", name="resp")
    assert not await hd.should_answer(CONV, responder, msg)  # a human answered: timed
    esc = await client.helpdesk.escalation(CONV)
    assert esc is not None and esc.first_human_at > 0
    done, text = await hd.resolve(esc.id, ASKER, "T1")
    assert done is None and text == t("hd.not_responder")
    member = UserRef(platform="slack", id="U8", name="group member")
    done, text = await hd.resolve(esc.id, member, "T1", groups=frozenset({"S55"}))
    assert done is not None and done.state == "resolved" and done.resolver == "slack:T1:U8"
    assert await hd.should_answer(CONV, ASKER, msg)
    [row] = await StatsReader(client.redis, client.keys).rows(days_back(1))
    assert (row.counts["escalations"], row.counts["resolved"]) == (1, 1)
    assert row.first_human_median_s is not None and row.resolve_median_s is not None


def test_channel_modes_decide_what_is_answered() -> None:
    def seen(**kw: Any) -> Seen:
        base: dict[str, Any] = dict(dm=False, mentioned=False, top_level=True, text="점심 메뉴")
        base.update(kw)
        return Seen(**base)

    mention, every = ChannelConfig(), ChannelConfig(mode="all")
    questions = ChannelConfig(mode="all", questions_only=True)
    off = ChannelConfig(mode="off")
    assert should_answer(off, seen(dm=True))
    assert not should_answer(off, seen(mentioned=True))
    assert not should_answer(mention, seen()) and should_answer(mention, seen(mentioned=True))
    assert should_answer(every, seen()) and not should_answer(every, seen(top_level=False))
    assert should_answer(every, seen(top_level=False, in_bot_thread=True))
    assert not should_answer(questions, seen())
    assert should_answer(questions, seen(text="VPN은 어떻게 연결하나요?"))


def test_admin_commands_change_a_channel() -> None:
    cfg = ChannelConfig()
    cfg = apply_command(cfg, ["mode", "all"]) or cfg
    cfg = apply_command(cfg, ["questions", "on"]) or cfg
    cfg = apply_command(cfg, ["responders", "<@U1|kim>", "<!subteam^S9|@infra>", "@U2"]) or cfg
    cfg = apply_command(cfg, ["escalated", "answer"]) or cfg
    assert (cfg.mode, cfg.questions_only, cfg.responders, cfg.answer_when_escalated) == (
        "all", True, ["U1", "S9", "U2"], True)
    assert "mode=all" in describe(cfg)
    assert apply_command(cfg, ["reset"]) is None
    with pytest.raises(ModeCommandError):
        apply_command(cfg, ["mode", "sometimes"])


async def test_an_admins_change_overrides_the_settings_for_every_replica(redis: Redis) -> None:
    keys = Keys("hdtest")
    settings = HelpdeskSettings(default_mode="off", responders=["U5"],
                                channels={"tg:-1": ChannelConfig(mode="all")})
    a, b = ChannelModes(redis, keys, settings), ChannelModes(redis, keys, settings)
    assert (await a.get("tg:-1")).mode == "all"
    assert (await a.get("tg:-1")).responders == ["U5"]  # the default responders
    assert (await a.get("tg:-2")).mode == "off"
    await a.set("tg:-2", ChannelConfig(mode="mention"))
    assert (await b.get("tg:-2")).mode == "mention"
    await b.clear("tg:-2")
    assert (await a.get("tg:-2")).mode == "off"
    await redis.delete(keys.channel_config("tg:-2"))


def test_stats_helpers() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert table([]) == "(no activity)" and summary_text([]) == "(no activity)"


async def test_a_delivered_answer_carries_its_buttons_and_is_counted(
    client: CoreClient, make_worker: Any
) -> None:
    chat = Chat()
    engine = ScriptedEngine(lambda _r: "답입니다.", chunk_chars=2, delay_s=0.01)
    conv = ConversationRef(platform="test", chat="c9", user="u1")
    user = UserRef(platform="test", id="u1")
    rec = ReplyRecord.ask(conv, user, "hd-1", "질문", {})
    async with make_worker(engine=engine), Deliveries(
            client, RecordingPlatform(chat), TUNING, owner="a") as d:
        await d.deliver(rec)
        await d.wait(rec.job_id)
    [mid] = chat.messages
    assert [parse_action(a) for a in chat.actions[mid]] == [
        ("up", rec.job_id), ("down", rec.job_id), ("human", rec.job_id)]
    ex = await client.helpdesk.exchange(rec.job_id)
    assert ex is not None and ex.outcome == "answered" and ex.completion_tokens > 0
    assert ex.first_visible_s >= 0
    rows = await StatsReader(client.redis, client.keys).rows(days_back(1), "test:c9")
    assert [r.counts["answered"] for r in rows] == [1]


def test_direct_messages_count_as_one_place_without_the_users_id() -> None:
    from kullm_core.helpdesk.service import channel_of

    tg_dm = ConversationRef(platform="telegram", chat="42", user="42")
    slack_dm = ConversationRef(platform="slack", workspace="T1", chat="D1", direct=True)
    group = ConversationRef(platform="telegram", chat="-100", user="42")
    assert (channel_of(tg_dm), channel_of(slack_dm), channel_of(group)) == (
        "tg:dm", "slack:T1:dm", "tg:-100")


async def test_closing_tells_the_conversation_and_updates_the_handoff_where_it_is_shown(
    client: CoreClient
) -> None:
    from kullm_core.wire import Escalation

    class View:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, dict[str, Any]]] = []

        async def tell(self, esc: Escalation, text: str) -> None:
            self.calls.append(("tell", text, esc.shown))

        async def show_resolved(self, esc: Escalation, text: str) -> None:
            self.calls.append(("resolved", text, esc.shown))

    hd, view = Helpdesk(client), View()
    handoff = await hd.escalate(CONV, ASKER)
    assert not isinstance(handoff, str)
    await client.helpdesk.set_shown(handoff.escalation.id, {"channel": "C9", "ts": "1.2"})
    admin = UserRef(platform="slack", id="UADMIN")
    refused = await hd.close(handoff.escalation.id, ASKER, "T1", view)
    assert refused == (False, t("hd.not_responder")) and view.calls == []
    client.settings.limits.admins.append("slack:T1:UADMIN")
    try:
        ok, text = await hd.close(handoff.escalation.id, admin, "T1", view)
    finally:
        client.settings.limits.admins.remove("slack:T1:UADMIN")
    assert ok and [c[0] for c in view.calls] == ["tell", "resolved"]
    assert view.calls[1] == ("resolved", text, {"channel": "C9", "ts": "1.2"})
    esc = await client.helpdesk.escalation(CONV)
    assert esc is not None and esc.state == "resolved" and esc.shown["ts"] == "1.2"
