"""Access rules: platform-qualified ids, the old unqualified form refused at load, admins by
id only, and the refusal throttle."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from kullm_core.errors import ConfigError
from kullm_core.keys import Keys
from kullm_core.limits import Limiter, RefusalThrottle
from kullm_core.settings import LimitSettings, load_settings
from kullm_core.wire import UserRef


def limiter(**limits: object) -> Limiter:
    settings = load_settings(None, limits=limits).limits
    return Limiter(Redis(), Keys(), settings)  # the pure checks never touch Redis


def tg(uid: str, username: str = "") -> UserRef:
    return UserRef(platform="telegram", id=uid, name=username)


def slack(uid: str) -> UserRef:
    return UserRef(platform="slack", id=uid, name="")


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("allowed_users", "alice", "tg:@username"),
        ("allowed_users", "123456", "tg:<numeric id>"),
        ("allowed_users", "U0ALICE", "slack:<team id>:<user id>"),
        ("allowed_users", "slack:U0ALICE", "slack:<team id>:<user id>"),
        ("admins", "tg:@alice", "not an @username"),
        ("admins", "U0ADMIN", "slack:<team id>:<user id>"),
        ("allowed_chats", "-100777", "tg:<chat id>"),
        ("allowed_workspaces", "T0123", "slack:<team id>"),
    ],
)
def test_an_unqualified_id_is_refused_at_load_saying_how_to_write_it(
    field: str, value: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, limits={field: [value]})
    text = str(err.value)
    assert f"limits.{field}" in text and repr(value) in text and hint in text


def test_qualified_ids_load_and_usernames_compare_case_insensitively() -> None:
    s = LimitSettings(allowed_users=["tg:1001", "tg:@Alice", "slack:T1:U0ALICE"],
                      admins=["tg:42", "slack:T1:U0ADMIN"], allowed_chats=["tg:-100777"],
                      allowed_workspaces=["slack:T1"])
    assert s.allowed_users == ["tg:1001", "tg:@alice", "slack:T1:U0ALICE"]
    lim = limiter(allowed_users=["tg:@Alice"])
    assert lim.allowed(tg("1001", "ALICE"))
    assert not lim.allowed(tg("1002", "bob"))


def test_a_telegram_username_equal_to_a_slack_admin_id_is_not_admin() -> None:
    lim = limiter(admins=["slack:T1:U0ADMIN"], allowed_users=["slack:T1:U0ADMIN"])
    impostor = tg("555", "U0ADMIN")
    assert not lim.is_admin(impostor)
    assert not lim.allowed(impostor, chat="555")
    assert lim.is_admin(slack("U0ADMIN"), workspace="T1")
    assert lim.allowed(slack("U0ADMIN"), chat="C1", workspace="T1")


def test_a_slack_admin_of_one_workspace_is_not_admin_in_another() -> None:
    lim = limiter(admins=["slack:T1:U0ADMIN"])
    assert not lim.is_admin(slack("U0ADMIN"), workspace="T2")


def test_a_telegram_chat_id_does_not_allow_a_slack_channel_of_the_same_name() -> None:
    lim = limiter(allowed_chats=["tg:-100777"])
    assert lim.allowed(tg("1"), chat="-100777")
    assert not lim.allowed(tg("1"), chat="-100888")
    assert not lim.allowed(slack("U1"), chat="-100777", workspace="T1")


def test_workspaces_and_channels_are_qualified_by_team() -> None:
    lim = limiter(allowed_workspaces=["slack:T1"], allowed_chats=["slack:T1:C1"])
    assert lim.allowed(slack("U1"), chat="C1", workspace="T1")
    assert not lim.allowed(slack("U1"), chat="C1", workspace="T2")
    assert not lim.allowed(slack("U1"), chat="C2", workspace="T1")


def test_admins_skip_the_user_list() -> None:
    lim = limiter(allowed_users=["tg:1001"], admins=["tg:42"])
    assert lim.allowed(tg("42", "boss"))
    assert not lim.allowed(tg("43", "boss"))


async def test_an_admin_is_not_rate_limited_but_others_are(redis: Redis) -> None:
    settings = load_settings(None, limits={"admins": ["slack:T1:U0ADMIN"],
                                           "requests_per_minute": 1}).limits
    lim = Limiter(redis, Keys(), settings)
    for i in range(3):
        assert (await lim.admit(slack("U0ADMIN"), f"a{i}", 1, workspace="T1")).refusal is None
    assert (await lim.admit(slack("U0OTHER"), "o1", 1, workspace="T1")).refusal is None
    refusal = (await lim.admit(slack("U0OTHER"), "o2", 1, workspace="T1")).refusal
    assert refusal is not None and refusal.kind == "rate_limited"


def test_the_refusal_throttle_lets_one_refusal_per_place_and_interval_through() -> None:
    now = [100.0]
    throttle = RefusalThrottle(10.0, clock=lambda: now[0])
    sent = [throttle.allow("tg:1") for _ in range(500)]
    assert sent.count(True) == 1 and throttle.dropped == 499
    assert throttle.allow("tg:2")  # another chat is not affected
    now[0] += 10.0
    assert throttle.allow("tg:1")
