from tests.telegram.helpers import ALICE, wait_reply


async def test_dm(tg, make_bot, worker, client):
    async with make_bot():
        msg = await tg.send_text(ALICE.id, ALICE, "안녕하세요, 자기소개 해 주세요")
        done, msgs = await wait_reply(tg, client, msg)
        print(repr(done.text), [m.text for m in msgs], tg.drafts, [c.method for c in tg.calls])
