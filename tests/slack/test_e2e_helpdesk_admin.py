"""End to end, the helpdesk's other Slack surfaces: buttons only on the last part of a long
answer (native stream and post + update), `/kullm human | resolve | mode | usage`, the App
Home tab for admins and everyone else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bots.slack import SlackTuning
from bots.slack.target import conversation
from bots.slack.texts import st
from kullm_core.engine.scripted import ScriptedEngine
from kullm_core.settings import Settings
from kullm_core.texts import t
from tests.conftest import test_settings_for
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.fakes.slack_blocks import buttons_of
from tests.slack.conftest import TEST_TUNING
from tests.slack.helpers import answered, job_of, long_settings

ADMIN = "U0ADMIN"
LONG = "".join(f"{i}번째 문단은 답변을 여러 메시지로 나누기 위한 긴 설명입니다.\n\n"
               for i in range(12))


@pytest.fixture
def settings(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return test_settings_for(
        redis_url, tiny_model_dir, tmp_path, limits={"admins": [f"slack:{TEAM}:{ADMIN}"]},
        helpdesk={"responders": ["U0CAROL"],
                  "channels": {f"slack:{TEAM}:dm": {"handoff_chat": "C0DESK"}}})


def responses(fake: FakeSlack) -> list[str]:
    return [r.get("text", "") for r in fake.responses]


async def answer_of(fake: FakeSlack, n: int) -> str:
    await fake.wait_for(lambda: len(fake.responses) >= n, what=f"command answer {n}")
    return str(fake.responses[n - 1].get("text", ""))


@pytest.mark.parametrize("channel", ["C0GENERAL", "D0ALICE"])
async def test_buttons_sit_on_the_last_part_of_a_long_answer_only(
    fake: FakeSlack, run_bot: Any, client: Any, make_worker: Any, channel: str,
    settings: Settings
) -> None:
    tuning = TEST_TUNING.model_copy(update={"max_message_chars": 200})
    assert isinstance(tuning, SlackTuning)
    engine = ScriptedEngine(lambda _: LONG, chunk_chars=8)
    async with make_worker(engine=engine, settings=long_settings(settings)), \
            run_bot(fake, tuning=tuning):
        msg = await fake.user_message("길게 설명해 주세요", channel=channel)
        await answered(fake, client, msg, after=msg.ts)
    thread = None if channel.startswith("D") else msg.ts
    parts = fake.bot_messages(channel, thread, after=msg.ts)
    assert len(parts) > 2
    assert [bool(buttons_of(p.blocks)) for p in parts] == [False] * (len(parts) - 1) + [True]
    job = job_of(msg)
    assert [b["action_id"] for b in buttons_of(parts[-1].blocks)] == [
        f"hd:up:{job}", f"hd:down:{job}", f"hd:human:{job}"]
    if channel == "C0GENERAL":
        assert parts[0].streamed and fake.calls_of("chat.update") == 0, \
            "streamed: the buttons ride on the last part's stopStream or post"
    else:
        assert not any(p.streamed for p in parts)
    assert not fake.block_errors and not fake.violations


async def test_slash_human_then_resolve_by_a_responder(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        ask = await fake.user_message("권한 신청은 어디서 하나요?")
        await answered(fake, client, ask)
        await fake.slash("human 급해요, 오늘 안에 필요합니다")
        assert await answer_of(fake, 1) == t("hd.called", "ko")
        handoff = fake.bot_messages(ask.channel, ask.ts)[-1]
        assert "<@U0CAROL>" in handoff.text and "급해요, 오늘 안에 필요합니다" in handoff.text
        await fake.slash("human")
        assert await answer_of(fake, 2) == t("hd.already_open", "ko")
        await fake.user_message("아직 답이 없나요?", user="U0BOB", thread_ts=ask.ts)
        await fake.slash("resolve", user="U0BOB")
        assert await answer_of(fake, 3) == t("hd.not_responder", "ko")
        await fake.slash("resolve", user="U0CAROL")
        resolved = t("hd.resolved", "ko", name="name-u0carol")
        assert await answer_of(fake, 4) == resolved
        await fake.wait_for(lambda: not buttons_of(handoff.blocks), what="button dropped")
    assert [m.text for m in fake.bot_messages(ask.channel, ask.ts)][-1] == resolved
    turns = await client.history(conversation(TEAM, ask.channel, ask.ts))
    assert [x.user for x in turns] == ["권한 신청은 어디서 하나요?"], \
        "the mention while escalated was not answered"


async def test_an_admin_sets_a_channel_to_answer_every_message(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        await fake.slash("mode all")
        assert await answer_of(fake, 1) == t("hd.admins_only", "ko")
        await fake.slash("mode all", user=ADMIN)
        assert (await answer_of(fake, 2)).startswith(t("hd.mode_set", "ko", config="mode=all"))
        msg = await fake.user_message("회의실 예약은 어떻게 하나요?", mention=False)
        await answered(fake, client, msg)
        await fake.slash("mode reset", user=ADMIN)
        assert "mode=mention" in await answer_of(fake, 3)
        await fake.slash("mode sideways", user=ADMIN)
        assert "cannot read" in await answer_of(fake, 4)


async def test_usage_and_the_app_home(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("안녕하세요", channel="D0ALICE")
        await answered(fake, client, msg, after=msg.ts)
        used = await client.limiter.used_today("slack:U0ALICE")
        assert used > 0
        await fake.slash("usage", channel="D0ALICE")
        unlimited = t("hd.usage_unlimited", "ko", used=used)
        assert await answer_of(fake, 1) == unlimited + " · " + t(
            "hd.requests", "ko", requests=0, per_minute="∞")
        await fake.slash("quota <@U0ALICE|alice> 9", channel="D0ALICE")  # not an admin
        assert await answer_of(fake, 2) == t("hd.admins_only", "ko")
        await fake.slash("quota <@U0ALICE|alice> 500", user=ADMIN, channel="D0ALICE")
        assert await answer_of(fake, 3) == t("hd.quota_set", "ko", user=f"slack:{TEAM}:U0ALICE",
                                             limit=500)
        await fake.slash("usage <@U0ALICE>", user=ADMIN, channel="D0ALICE")
        looked = await answer_of(fake, 4)
        assert looked.startswith(f"slack:{TEAM}:U0ALICE · ") and f"{used} / 500" in looked
        assert await client.limiter.daily_limit("slack:U0ALICE") == 500
        await fake.slash("quota <@U0ALICE> default", user=ADMIN, channel="D0ALICE")
        await answer_of(fake, 5)
        await fake.open_home(user="U0ALICE")
        await fake.open_home(user=ADMIN)
        await fake.wait_for(lambda: len(fake.home) == 2, what="both home tabs")

    def texts(view: dict[str, Any]) -> str:
        return "\n".join(str(b.get("text", {}).get("text", "")) for b in view["blocks"])

    mine, admin = texts(fake.home["U0ALICE"]), texts(fake.home[ADMIN])
    assert st("hd_home_usage", "ko") in mine and unlimited in mine
    assert st("hd_home_stats", "ko", days=7) in admin and "1 asked, 1 answered" in admin
    assert "asked" not in mine
    assert not fake.block_errors


async def test_a_workspace_without_markdown_blocks_gets_the_buttons_under_mrkdwn(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    fake.reject_markdown_blocks = True
    async with run_bot(fake):
        msg = await fake.user_message("안녕", channel="D0ALICE")
        await answered(fake, client, msg, after=msg.ts)
    [reply] = fake.bot_messages("D0ALICE", None, after=msg.ts)
    assert [b["type"] for b in reply.blocks][-1] == "actions"
    assert all(b["type"] == "section" for b in reply.blocks[:-1]) and reply.blocks[:-1]
    assert "".join(b["text"]["text"] for b in reply.blocks[:-1]) == reply.text
    assert fake.block_errors == [], "only the markdown block was refused, never the buttons"


async def test_a_dm_hand_off_goes_to_the_helpdesk_channel(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message("계정이 잠겼어요", channel="D0ALICE")
        await answered(fake, client, msg, after=msg.ts)
        reply, job = fake.bot_messages("D0ALICE", None, after=msg.ts)[-1], job_of(msg)
        await fake.press(reply, f"hd:human:{job}")
        await fake.wait_for(lambda: t("hd.called", "ko") in fake.ephemeral_texts("U0ALICE"),
                            what="Alice told")
        [handoff] = fake.bot_messages("C0DESK", None)
        assert "<@U0ALICE>" in handoff.text and "<@U0CAROL>" in handoff.text
        assert "계정이 잠겼어요" in handoff.text
        await fake.slash("resolve", user="U0CAROL", channel="C0DESK")
        resolved = t("hd.resolved", "ko", name="name-u0carol")
        assert await answer_of(fake, 1) == resolved
        await fake.wait_for(lambda: not buttons_of(handoff.blocks), what="button dropped")
    assert fake.bot_messages("D0ALICE", None)[-1].text == resolved, "the asker is told"
