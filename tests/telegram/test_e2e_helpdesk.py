"""End to end, the helpdesk in a Telegram private chat: 👍 / 👎 under the answer, the comment
as the next message, a button on a forgotten answer, data that is none of ours, `/usage`,
`/quota` and `/stats`. Real PTB against the fake Bot API, real Redis, real worker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bots.telegram.texts import t
from kullm_core.client import CoreClient
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.helpdesk.stats import StatsReader, days_back, summary_text
from kullm_core.settings import Settings
from kullm_core.wire import UserRef
from tests.conftest import test_settings_for
from tests.fakes.telegram_api import FakeTelegram, Msg, User
from tests.fakes.telegram_markup import buttons
from tests.telegram.conftest import MakeBot
from tests.telegram.helpers import ALICE, GROUP, job_of, reply_texts, wait_reply

ADMIN = User(1009, "Admin", "admin", "en")
ANSWER = "경복궁과 북촌 한옥마을을 추천합니다."


@pytest.fixture
def settings(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return test_settings_for(redis_url, tiny_model_dir, tmp_path,
                             limits={"admins": [f"tg:{ADMIN.id}"]})


async def said(tg: FakeTelegram, msg: Msg) -> str:
    """The bot's one-message answer to a user's message (a command's reply)."""
    await tg.wait_for(lambda: reply_texts(tg, msg))
    [text] = reply_texts(tg, msg)
    return text


async def toast(tg: FakeTelegram, query: str) -> str:
    await tg.wait_for(lambda: tg.toast(query) is not None)
    return str((tg.toast(query) or {}).get("text") or "")


async def test_rating_twice_keeps_the_latest_and_the_next_message_is_the_comment(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: ANSWER)
    async with make_worker(engine=engine), make_bot():
        ask = await tg.send_text(ALICE.id, ALICE, "서울에서 가 볼 만한 곳은?")
        _, shown = await wait_reply(tg, client, ask)
        job = job_of(ask)
        answer = shown[-1]
        assert buttons(answer.reply_markup) == [
            ("👍", f"hd:up:{job}"), ("👎", f"hd:down:{job}"), (t("hd.human", "ko"),
                                                              f"hd:human:{job}")]
        up = await toast(tg, await tg.press(answer, ALICE, "👍"))
        down = await toast(tg, await tg.press(answer, ALICE, "👎"))
        prompt = t("hd.comment_prompt", "ko")
        await tg.wait_for(lambda: any(m.text == prompt for m in tg.bot_messages(ALICE.id)))
        comment = await tg.send_text(ALICE.id, ALICE, "너무 짧아요. 교통편도 알려 주세요.")
        saved = await said(tg, comment)
    assert up == t("hd.rated", "ko", rating="👍")
    assert down == t("hd.rated_again", "ko", rating="👎")
    assert saved == t("hd.comment_saved", "ko")
    feedback = await client.helpdesk.feedback(job)
    assert [(f.rater, f.rating, f.comment) for f in feedback] == [
        (f"tg:{ALICE.id}", "down", "너무 짧아요. 교통편도 알려 주세요.")]
    assert len(engine.requests) == 1, "pressing and commenting never ask the model"
    assert [m.reply_markup is None for m in shown[:-1]] == [True] * (len(shown) - 1)
    rows = await StatsReader(client.redis, client.keys).rows(days_back(1), "tg:dm")
    assert (rows[0].counts["up"], rows[0].counts["down"]) == (0, 1)
    assert not tg.violations


async def test_skip_saves_the_rating_without_a_comment(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: ANSWER)
    async with make_worker(engine=engine), make_bot():
        ask = await tg.send_text(ALICE.id, ALICE, "서울 명소?")
        _, shown = await wait_reply(tg, client, ask)
        await toast(tg, await tg.press(shown[-1], ALICE, "👎"))
        skip = await tg.command(ALICE.id, ALICE, "/skip")
        skipped = await said(tg, skip)
        after = await tg.send_text(ALICE.id, ALICE, "그럼 부산은?")
        await wait_reply(tg, client, after)  # a question again, not a comment
    assert skipped == t("hd.comment_skipped", "ko")
    [fb] = await client.helpdesk.feedback(job_of(ask))
    assert (fb.rating, fb.comment) == ("down", "")
    assert len(engine.requests) == 2


async def test_a_button_on_a_forgotten_answer_says_it_is_gone(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = ScriptedEngine(lambda _r: ANSWER)
    async with make_worker(engine=engine), make_bot():
        ask = await tg.send_text(ALICE.id, ALICE, "서울 명소?")
        _, shown = await wait_reply(tg, client, ask)
        forget = await tg.command(ALICE.id, ALICE, "/forget")
        await tg.wait_for(lambda: tg.replies_to(ALICE.id, forget.message_id))
        [confirm] = tg.replies_to(ALICE.id, forget.message_id)
        await toast(tg, await tg.press_button(confirm, ALICE, f"forget:yes:{ALICE.id}"))
        await tg.wait_for(lambda: confirm.text.startswith("🗑"))
        gone_up = await toast(tg, await tg.press(shown[-1], ALICE, "👍"))
        gone_human = await toast(tg, await tg.press(shown[-1], ALICE, t("hd.human", "ko")))
        with caplog.at_level(logging.WARNING, logger="bots.telegram"):
            odd = await toast(tg, await tg.press_button(shown[-1], ALICE, "zz:unknown"))
            bad = await toast(tg, await tg.press_button(shown[-1], ALICE, "hd:up:XYZ"))
    assert gone_up == gone_human == t("hd.gone", "ko")
    assert odd == bad == ""
    assert await client.helpdesk.feedback(job_of(ask)) == []
    assert sum("unknown data" in r.getMessage() for r in caplog.records) == 2
    assert len(engine.requests) == 1


async def test_usage_and_an_admins_quota_and_lookup(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: ANSWER)
    async with make_worker(engine=engine), make_bot():
        ask = await tg.send_text(ALICE.id, ALICE, "서울 명소?")
        await wait_reply(tg, client, ask)
        used = (await client.limiter.usage(UserRef(platform="telegram", id=str(ALICE.id))))
        mine = await said(tg, await tg.command(ALICE.id, ALICE, "/usage"))
        refused = await said(tg, await tg.command(ALICE.id, ALICE, f"/quota tg:{ALICE.id} 9"))
        quota = await said(tg, await tg.command(ADMIN.id, ADMIN, f"/quota tg:{ALICE.id} 500"))
        looked = await said(tg, await tg.command(ADMIN.id, ADMIN, f"/usage tg:{ALICE.id}"))
        limited = await said(tg, await tg.command(ALICE.id, ALICE, "/usage"))
        back = await said(tg, await tg.command(ADMIN.id, ADMIN, f"/quota tg:{ALICE.id} default"))
    assert used.used_today > 0
    assert mine == t("hd.usage_unlimited", "ko", used=used.used_today) + " · " + t(
        "hd.requests", "ko", requests=used.requests_last_minute, per_minute="∞")
    assert refused == t("hd.admins_only", "ko")
    assert quota == t("hd.quota_set", "en", user=f"tg:{ALICE.id}", limit=500)
    assert looked.startswith(f"tg:{ALICE.id} · ") and f"{used.used_today} / 500" in looked
    assert limited == t("hd.usage", "ko", used=used.used_today, limit=500,
                        requests=used.requests_last_minute, per_minute="∞")
    assert back == t("hd.quota_set", "en", user=f"tg:{ALICE.id}",
                     limit=t("hd.quota_default", "en", n=0))
    owner = client.limiter.owner(UserRef(platform="telegram", id=str(ALICE.id)))
    assert await client.limiter.daily_limit(owner) == 0


async def test_stats_for_an_admin_show_the_counts(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient
) -> None:
    engine = ScriptedEngine(lambda _r: ANSWER)
    async with make_worker(engine=engine), make_bot():
        ask = await tg.send_text(ALICE.id, ALICE, "서울 명소?")
        _, shown = await wait_reply(tg, client, ask)
        await toast(tg, await tg.press(shown[-1], ALICE, "👍"))
        refused = await said(tg, await tg.command(ALICE.id, ALICE, "/stats"))
        stats = await tg.command(ADMIN.id, ADMIN, "/stats")
        text = await said(tg, stats)
    assert refused == t("hd.admins_only", "ko")
    rows = await StatsReader(client.redis, client.keys).rows(days_back(7))
    assert rows and rows[-1].counts["questions"] == 1 and rows[-1].counts["up"] == 1
    assert text.startswith(t("hd_stats_title", "en", days=7) + "\n" + summary_text(rows))
    assert "1 asked, 1 answered" in text and "👍 1 👎 0" in text
    [reply] = tg.replies_to(ADMIN.id, stats.message_id)
    assert [e["type"] for e in reply.entities] == ["pre"]


LONG = "\n\n".join(f"{i}번째 문단입니다. " + "긴 답변이 여러 메시지로 나뉩니다. " * 30
                   for i in range(12))


@pytest.mark.parametrize("chat", ["private", "group"])
async def test_a_long_answer_has_the_buttons_on_its_last_part_only(
    tg: FakeTelegram, make_bot: MakeBot, make_worker: Any, client: CoreClient, chat: str
) -> None:
    engine = ScriptedEngine(lambda _r: LONG, chunk_chars=600)
    where = ALICE.id if chat == "private" else GROUP
    async with make_worker(engine=engine), make_bot():
        if chat == "private":
            ask = await tg.send_text(where, ALICE, "길게 설명해 줘")
        else:
            ask = await tg.mention(where, ALICE, "길게 설명해 줘")
        _, shown = await wait_reply(tg, client, ask)
    job = job_of(ask)
    assert len(shown) >= 2
    assert [bool(m.reply_markup) for m in shown] == [False] * (len(shown) - 1) + [True]
    assert [d for _, d in buttons(shown[-1].reply_markup)] == [
        f"hd:up:{job}", f"hd:down:{job}", f"hd:human:{job}"]
    with_buttons = [c for c in tg.calls if c.params.get("reply_markup") and not c.error
                    and int(c.params.get("chat_id", 0)) == where]
    assert len(with_buttons) == 1, "only the call that shows the last part carries them"
    assert not tg.violations


async def test_help_lists_the_helpdesk_and_the_admin_commands_only_to_admins(
    tg: FakeTelegram, make_bot: MakeBot
) -> None:
    async with make_bot():
        mine = await said(tg, await tg.command(ALICE.id, ALICE, "/help"))
        admins = await said(tg, await tg.command(ADMIN.id, ADMIN, "/help"))
    assert t("help_helpdesk", "ko") in mine and t("help_admin", "ko") not in mine
    assert admins.endswith(t("help_helpdesk", "en") + "\n\n" + t("help_admin", "en"))
