from tests.slack.helpers import answered


async def test_mention_smoke(fake, run_bot, client, worker):
    async with run_bot(fake):
        msg = await fake.user_message("안녕하세요, 자기소개 해 주세요")
        done = await answered(fake, client, msg)
        print("REPLY", repr(done.text), fake.calls)
