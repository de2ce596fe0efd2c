"""Every Redis key this project writes, in one place, with its lifetime.

| key                         | type   | lifetime                                           |
|-----------------------------|--------|----------------------------------------------------|
| {p}:jobs                    | stream | permanent; entries are XDEL'd once answered         |
| {p}:dead                    | list   | permanent, capped (LTRIM) to 1000 dead-letter jobs  |
| {p}:dedupe:{source_id}      | string | queue.dedupe_ttl_s                                  |
| {p}:reply:{job_id}          | stream | queue.reply_ttl_s after done;                       |
|                             |        | REPLY_TTL_BEFORE_DONE_S (1 day) before              |
| {p}:done:{job_id}           | string | queue.dedupe_ttl_s (exactly-once commit marker)     |
| {p}:cancel:{job_id}         | string | CANCEL_TTL_S (1 hour)                               |
| {p}:order:{conversation}    | list   | ORDER_TTL_S (7 days), renewed by every enqueue; the |
|                             |        | stream ids of the conversation's unfinished jobs,   |
|                             |        | oldest first: only the first may run                |
| {p}:active:{conversation}   | string | ACTIVE_TTL_S (1 day); the job now answering this    |
|                             |        | conversation, deleted by its commit (owner-checked) |
| {p}:conv:{conversation}     | list   | history.retention_hours, sliding                    |
| {p}:uidx:{platform}:{user}  | set    | history.retention_hours, sliding (for /forget)      |
| {p}:ujobs:{platform}:{user} | set    | USER_JOBS_TTL_S (1 day) + queue.reply_ttl_s,        |
|                             |        | sliding: the user's job ids, so /forget finds their |
|                             |        | reply streams                                       |
| {p}:worker:{worker_id}      | string | WORKER_HEALTH_HEARTBEATS (3) heartbeats (health)    |
| {p}:quota:{user}:{day}      | string | QUOTA_TTL_S (2 days): tokens generated that day     |
| {p}:qres:{user}:{day}       | hash   | QUOTA_TTL_S: job -> tokens reserved (until it ends) |
| {p}:uquota:{user}           | string | none: an admin's per-user daily limit (config)      |
| {p}:rwin:{user}             | zset   | 1 minute: the moving window of the user's requests  |
| {p}:seen:{platform}:{id}    | string | queue.dedupe_ttl_s (adapter update/event dedupe)    |
| {p}:chan:cancel             | pubsub | (channel, nothing stored)                           |
| {p}:positions               | string | POSITIONS_LOCK_TTL_S (1.5 s; one worker at a time   |
|                             |        | announces positions; lapses, never deleted)         |
| {p}:warming                 | string | WARMING_TTL_S (30 s), renewed while a worker loads  |
|                             |        | its model; holds its owner id, released only by it  |
| {p}:{ns}:rindex             | zset   | REPLY_INDEX_TTL_S after the last new reply; members|
|                             |        | older than REPLY_RECORD_TTL_S pruned on each scan   |
| {p}:{ns}:rrec:{job_id}      | string | REPLY_RECORD_TTL_S (deleted once delivered)         |
| {p}:{ns}:rlease:{job_id}    | string | the adapter's lease, renewed by its owner           |
| {p}:{ns}:budget:{bucket}    | zset   | 2 x the bucket's period + in-flight bound, renewed  |
|                             |        | by each send (`kullm_core.budget`; no text); with   |
|                             |        | `:pause` (Retry-After), `:line`/`:alive` (stale_s + |
|                             |        | 1 s) and `:served` (window + stale_s) beside it     |
| {p}:hd:exch:{job_id}        | string | history.retention_hours: a finished reply's Exchange |
| {p}:hd:fb:{job_id}          | hash   | history.retention_hours: rater -> Feedback          |
| {p}:hd:esc:{escalation_id}  | string | history.retention_hours: an Escalation             |
| {p}:hd:user:{platform}:{id} | set    | history.retention_hours, sliding: the helpdesk keys |
|                             |        | holding the user's data, so /forget finds them      |
| {p}:hd:chan:{channel}       | string | none: an admin's ChannelConfig (configuration)      |
| {p}:hd:stats:{day}          | hash   | STATS_TTL_S: `{channel}|{metric}` -> count (no text) |
| {p}:hd:ttfv:{day}:{channel} | list   | STATS_TTL_S: seconds to first visible text, capped  |
| {p}:hd:solve:{what}:{day}:…| list   | STATS_TTL_S: seconds to first human reply / resolve |
| {p}:hd:users:{day}:{channel}| hll    | STATS_TTL_S: distinct askers (HyperLogLog: no ids)  |
| {p}:tg:* / {p}:slack:*      | any    | adapter state, built with `Keys.adapter`; each key's |
|                             |        | lifetime is documented where the adapter defines it |
"""

from __future__ import annotations

import time
from dataclasses import dataclass

GROUP = "workers"
DAY_S = 86400

REPLY_TTL_BEFORE_DONE_S = DAY_S
"""A job's reply stream until its `done`/`error` (then `queue.reply_ttl_s`)."""
CANCEL_TTL_S = 3600
"""A cancel request outlives any job that could still read it."""
ORDER_TTL_S = 7 * DAY_S
"""Lifetime of a conversation's order list, renewed by each enqueue."""
ACTIVE_TTL_S = DAY_S
"""The conversation's active-job marker; its job's commit deletes it (owner-checked)."""
USER_JOBS_TTL_S = DAY_S
"""A user's job index, plus `queue.reply_ttl_s` (so /forget finds every reply stream)."""
WORKER_HEALTH_HEARTBEATS = 3
"""A worker's health key lives this many heartbeats."""
QUOTA_TTL_S = 2 * DAY_S
"""A per-day token counter outlives its (UTC) day."""
POSITIONS_INTERVAL_S = 2.0
"""How often the worker holding the positions lock announces places in line."""
POSITIONS_LOCK_TTL_S = POSITIONS_INTERVAL_S * 0.75
"""Held by one worker per round; lapses before the next round so another may take it."""
WARMING_TTL_S = 30
"""The warming flag, renewed every third of it while a worker loads its model."""
REPLY_RECORD_TTL_S = DAY_S
"""A reply record outlives its job's reply stream (1 day before `done`)."""
REPLY_INDEX_TTL_S = 2 * DAY_S
"""The index of an adapter's reply records, renewed by each new reply."""


@dataclass(frozen=True)
class Keys:
    """Key builder bound to one prefix (`redis.prefix`)."""

    prefix: str = "kullm"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def positions_lock(self) -> str:
        return f"{self.prefix}:positions"

    @property
    def warming(self) -> str:
        return f"{self.prefix}:warming"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:chan:cancel"

    def dedupe(self, source_id: str) -> str:
        return f"{self.prefix}:dedupe:{source_id}"

    def reply(self, job_id: str) -> str:
        return f"{self.prefix}:reply:{job_id}"

    def done(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def order(self, conversation: str) -> str:
        return f"{self.prefix}:order:{conversation}"

    def active(self, conversation: str) -> str:
        return f"{self.prefix}:active:{conversation}"

    def conv(self, conversation: str) -> str:
        return f"{self.prefix}:conv:{conversation}"

    def user_index(self, platform: str, user_id: str) -> str:
        return f"{self.prefix}:uidx:{platform}:{user_id}"

    def user_jobs(self, platform: str, user_id: str) -> str:
        return f"{self.prefix}:ujobs:{platform}:{user_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def quota(self, user: str, day: str) -> str:
        return f"{self.prefix}:quota:{user}:{day}"

    def quota_reserved(self, user: str, day: str) -> str:
        return f"{self.prefix}:qres:{user}:{day}"

    def user_quota(self, user: str) -> str:
        return f"{self.prefix}:uquota:{user}"

    def request_window(self, user: str) -> str:
        return f"{self.prefix}:rwin:{user}"

    def seen(self, platform: str, item_id: str) -> str:
        return f"{self.prefix}:seen:{platform}:{item_id}"

    def adapter(self, namespace: str) -> str:
        """Root of one adapter's own keys (`tg`, `slack`): ``{prefix}:{namespace}``."""
        return f"{self.prefix}:{namespace}"

    def reply_index(self, namespace: str) -> str:
        """`kullm_core.replies`: the replies an adapter (`tg`, `slack`) is delivering."""
        return f"{self.prefix}:{namespace}:rindex"

    def reply_record(self, namespace: str, job_id: str) -> str:
        return f"{self.prefix}:{namespace}:rrec:{job_id}"

    def reply_lease(self, namespace: str, job_id: str) -> str:
        return f"{self.prefix}:{namespace}:rlease:{job_id}"

    def budget(self, namespace: str, bucket: str) -> str:
        """`kullm_core.budget`: one send-budget bucket of a platform account (bot, app)."""
        return f"{self.prefix}:{namespace}:budget:{bucket}"

    # -- the team helpdesk (`kullm_core.helpdesk`) ---------------------------------------------

    def exchange(self, job_id: str) -> str:
        return f"{self.prefix}:hd:exch:{job_id}"

    def feedback(self, job_id: str) -> str:
        return f"{self.prefix}:hd:fb:{job_id}"

    def escalation(self, escalation_id: str) -> str:
        return f"{self.prefix}:hd:esc:{escalation_id}"

    def helpdesk_user(self, platform: str, user_id: str) -> str:
        return f"{self.prefix}:hd:user:{platform}:{user_id}"

    def channel_config(self, channel: str) -> str:
        return f"{self.prefix}:hd:chan:{channel}"

    def channel_config_pattern(self) -> str:
        return f"{self.prefix}:hd:chan:*"

    def stats(self, day: str) -> str:
        return f"{self.prefix}:hd:stats:{day}"

    def stats_ttfv(self, day: str, channel: str) -> str:
        return f"{self.prefix}:hd:ttfv:{day}:{channel}"

    def stats_solve(self, day: str, channel: str, what: str) -> str:
        """`what`: `first` (time to the first human reply) or `resolved`."""
        return f"{self.prefix}:hd:solve:{what}:{day}:{channel}"

    def stats_users(self, day: str, channel: str) -> str:
        return f"{self.prefix}:hd:users:{day}:{channel}"


STATS_TTL_S = 400 * DAY_S
"""Helpdesk statistics hold counts and durations only (no text, no ids): kept 400 days."""
STATS_SAMPLES = 5000
"""Per day and channel, the durations kept for medians and p95 (the latest ones)."""


def utc_day(at: float | None = None) -> str:
    """The UTC day (``YYYYMMDD``) day-keyed counters (quota, statistics) count `at` in."""
    return time.strftime("%Y%m%d", time.gmtime(time.time() if at is None else at))
