"""/kullm forget through the real Bolt app: afterwards no key in Redis holds the user's text,
and only documented ones (no text) still name them; the other person's turns stay."""

from __future__ import annotations

from typing import Any

from bots.slack.commands import FORGET_YES
from bots.slack.target import conversation
from kullm_core.texts import t
from tests.core.test_forget import everything
from tests.fakes.slack_api import TEAM, FakeSlack
from tests.slack.helpers import answered

SECRET = "앨리스만아는슬랙이야기"
KEPT = (b":dedupe:", b":done:", b":seen:", b":cancel:", b":rate:", b":quota:")


async def test_forget_leaves_no_key_with_the_users_text(
    fake: FakeSlack, run_bot: Any, client: Any, worker: Any
) -> None:
    async with run_bot(fake):
        msg = await fake.user_message(f"기억해 줘: {SECRET}")
        await answered(fake, client, msg)
        bob = await fake.user_message("저도 궁금해요", user="U0BOB", thread_ts=msg.ts,
                                      mention=False)
        await answered(fake, client, bob, thread=msg.ts, after=bob.ts)
        dm = await fake.user_message(f"DM: {SECRET}", channel="D0ALICE")
        await answered(fake, client, dm, after=dm.ts)
        ack, _ = await fake.slash("forget")
        assert ack is not None
        await fake.wait_for(lambda: bool(fake.responses), what="confirmation")
        button = fake.responses[0]["blocks"][1]["elements"][0]
        assert await fake.click(FORGET_YES, button["value"]) is not None
        await fake.wait_for(lambda: any(r.get("text") == t("forgot", "ko", turns=2)
                                        for r in fake.responses), what="forgot")
    after = await everything(client.redis)
    assert not [k for k, v in after.items() if SECRET.encode() in k + v]
    named = [k for k, v in after.items() if b"U0ALICE" in k + v]
    assert [k for k in named if not any(part in k for part in KEPT)] == []
    turns = await client.history(conversation(TEAM, msg.channel, msg.ts))
    assert [x.user for x in turns] == ["저도 궁금해요"]
