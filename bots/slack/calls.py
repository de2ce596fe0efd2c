"""Running a reply's Slack calls, and what each Slack answer means for the reply.

Outcomes are of four kinds: done (state advances), refused in a way the reply can adapt to
(no native streaming, no markdown blocks, message too long, stream expired, message deleted),
transient (network, 5xx: retried with backoff; a post whose outcome is unknown is first looked
up by its metadata so it is never posted twice), and fatal (channel gone, no access): the reply
is given up and logged, never retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError

from bots.slack.render import message_payload
from bots.slack.reply import METADATA_EVENT, Msg, Reply
from bots.slack.scheduler import SlackCall, api_error
from kullm_core import metrics

log = logging.getLogger(__name__)

STREAM_UNAVAILABLE = frozenset({
    "unknown_method", "not_allowed_token_type", "missing_scope", "feature_not_enabled",
    "invalid_arguments", "channel_type_not_supported", "missing_recipient_team_id",
    "missing_recipient_user_id", "method_deprecated", "deprecated_endpoint", "not_supported",
    "invalid_chunks", "enterprise_is_restricted", "access_denied", "no_permission",
})
STREAM_GONE = frozenset({"message_not_in_streaming_state", "streaming_state_conflict"})
TOO_LONG = frozenset({"msg_too_long", "msg_blocks_too_long", "markdown_text_too_long"})
BLOCKS_REFUSED = frozenset({"invalid_blocks", "invalid_blocks_format"})
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message"})
TRANSIENT = frozenset({
    "internal_error", "fatal_error", "service_unavailable", "request_timeout",
    "messaging_processing_failed", "team_added_to_org",
})
SIDE_CALLS = frozenset({"status", "react"})
EDITS = frozenset({"update", "append", "stop"})


def _metadata(reply: Reply, part: int) -> dict[str, Any]:
    return {"event_type": METADATA_EVENT,
            "event_payload": {"job": reply.job_id, "part": part}}


def _payload(reply: Reply, md: str) -> dict[str, Any]:
    return message_payload(md, blocks=reply.env.tuning.markdown_blocks
                           and reply.target.team not in reply.env.blocks_off)


async def run_op(reply: Reply, op: SlackCall) -> None:
    """Make the call `op` describes and record its effect on `reply`."""
    t, web, d = reply.target, reply.env.web, op.data
    if op.kind == "status":
        reply.status = None
        await web.assistant_threads_setStatus(
            channel_id=t.channel, thread_ts=t.thread_ts, status=d["text"])
    elif op.kind == "react":
        reply.reaction = None
        await web.reactions_add(channel=t.channel, timestamp=t.source_ts, name=d["name"])
        reply.reacted = d["name"]
    elif op.kind == "post":
        await _post(reply, op)
    elif op.kind == "update":
        await web.chat_update(channel=t.channel, ts=reply.msgs[op.index].ts,
                              **_payload(reply, d["md"]))
        reply.msgs[op.index].sent = d["md"]
    elif op.kind == "start":
        resp = await web.chat_startStream(
            channel=t.channel, thread_ts=t.thread_ts, markdown_text=d["text"],
            recipient_team_id=t.team or None, recipient_user_id=t.user or None)
        reply.msgs.append(Msg(str(resp["ts"]), streaming=True, appended=d["n"]))
        _visible(reply)
        await _persist(reply)
    elif op.kind == "append":
        await web.chat_appendStream(channel=t.channel, ts=reply.msgs[op.index].ts,
                                    markdown_text=d["text"])
        reply.msgs[op.index].appended += d["n"]
    elif op.kind == "stop":
        await _stop(reply, op)
    elif op.kind == "delete":
        await web.chat_delete(channel=t.channel, ts=reply.msgs[op.index].ts)
        reply.msgs.pop(op.index)
        await _persist(reply)
    elif op.kind == "reconcile":
        await _reconcile(reply, op.index)
    reply.edits += op.kind in EDITS
    reply.failures = 0
    reply.retry_at = 0.0


async def _persist(reply: Reply) -> None:
    """Store the messages' ts in the reply record. Best effort: the Slack call already
    happened and must not be repeated because Redis hiccupped."""
    try:
        await reply.save()
    except Exception as exc:
        log.warning("job %s: saving the reply record failed (%s)", reply.job_id, exc)


def _visible(reply: Reply) -> None:
    if reply.first_visible_at is None:
        reply.first_visible_at = time.monotonic()
        if reply.received_at is not None:
            metrics.first_text("slack", reply.first_visible_at - reply.received_at)


async def _post(reply: Reply, op: SlackCall) -> None:
    t = reply.target
    payload = _payload(reply, op.data["md"])
    if not payload.get("blocks"):
        payload.pop("blocks", None)
    resp = await reply.env.web.chat_postMessage(
        channel=t.channel, thread_ts=t.thread_ts or None, metadata=_metadata(reply, op.index),
        unfurl_links=False, unfurl_media=False, **payload)
    msg = Msg(str(resp["ts"]), sent=op.data["md"])
    if op.index < len(reply.msgs):
        reply.msgs[op.index] = msg
    else:
        reply.msgs.append(msg)
    if reply.mode == "stream":
        reply.forced.append(op.data["end"])
    _visible(reply)
    await _persist(reply)


async def _stop(reply: Reply, op: SlackCall) -> None:
    t, d = reply.target, op.data
    m = reply.msgs[op.index]
    try:
        await reply.env.web.chat_stopStream(channel=t.channel, ts=m.ts,
                                            markdown_text=d["text"] or None)
    except SlackApiError as exc:
        if api_error(exc)[1] not in STREAM_GONE:
            raise
        log.info("job %s: stream %s already closed; rewriting it", reply.job_id, m.ts)
        m.sent = None
        reply.rewrite()
    else:
        m.appended += d["n"]
        if reply.mode == "stream":
            reply.forced.append(d["end"])
            m.sent = d["sent"]
    m.streaming = False
    await _persist(reply)


async def _reconcile(reply: Reply, part: int) -> None:
    """After a post whose outcome is unknown: adopt it if Slack has it, else post again."""
    t, web = reply.target, reply.env.web
    reply.reconcile = None
    if t.thread_ts:
        resp = await web.conversations_replies(channel=t.channel, ts=t.thread_ts,
                                               include_all_metadata=True, limit=200)
    else:
        resp = await web.conversations_history(channel=t.channel, oldest=t.source_ts,
                                               include_all_metadata=True, limit=100)
    for message in resp.get("messages") or []:
        meta = message.get("metadata") or {}
        payload = meta.get("event_payload") or {}
        if (meta.get("event_type") == METADATA_EVENT and payload.get("job") == reply.job_id
                and int(payload.get("part", -1)) == part):
            log.info("job %s: part %d was posted after all (ts %s)", reply.job_id, part,
                     message.get("ts"))
            msg = Msg(str(message["ts"]))
            if part < len(reply.msgs):
                reply.msgs[part] = msg
            else:
                reply.msgs.append(msg)
            if reply.mode == "stream":
                reply.rewrite()
            await _persist(reply)
            return


def handle_error(reply: Reply, op: SlackCall, exc: BaseException) -> None:
    """A call failed with something other than a rate limit (the scheduler handles 429)."""
    if op.kind in SIDE_CALLS:
        log.info("job %s: %s failed (%s); skipped", reply.job_id, op.kind, exc)
        return
    if isinstance(exc, SlackApiError):
        _api_error(reply, op, exc)
    elif isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError):
        _transient(reply, op, repr(exc))
    else:
        log.error("job %s: %s failed unexpectedly", reply.job_id, op.kind, exc_info=exc)
        _transient(reply, op, repr(exc))
    reply.env.wake()


def _api_error(reply: Reply, op: SlackCall, exc: SlackApiError) -> None:
    status, error = api_error(exc)
    team = reply.target.team
    if op.kind == "start" and error in STREAM_UNAVAILABLE:
        log.warning("job %s: native streaming refused in %s (%s); using post + update",
                    reply.job_id, team, error)
        reply.env.native_off[team] = time.monotonic() + reply.env.tuning.native_disable_s
        reply.rewrite()
    elif op.kind in ("append", "stop") and error in STREAM_GONE:
        reply.msgs[op.index].streaming = False
        reply.msgs[op.index].sent = None
        reply.rewrite()
    elif error in TOO_LONG:
        _shrink(reply, op)
    elif error in BLOCKS_REFUSED and team not in reply.env.blocks_off:
        log.warning("workspace %s refused markdown blocks; using mrkdwn text", team)
        reply.env.blocks_off.add(team)
    elif op.kind in ("update", "delete") and error in MESSAGE_GONE:
        if op.kind == "delete":
            reply.msgs.pop(op.index)
        else:
            reply.msgs[op.index] = Msg("")
    elif status >= 500 or error in TRANSIENT:
        _transient(reply, op, error or str(status))
    else:
        reply.give_up(f"{op.kind}: {error or status}")


def _shrink(reply: Reply, op: SlackCall) -> None:
    floor = reply.env.tuning.min_message_chars
    if reply.mode == "stream" and op.kind in ("append", "stop") and op.data.get("n"):
        m = reply.msgs[op.index]
        start = reply.forced[-1] if reply.forced else 0
        reply.forced.append(start + m.appended)
        log.info("job %s: stream message full; continuing in a new one", reply.job_id)
        return
    if reply.limit <= floor:
        reply.give_up(f"{op.kind}: message too long even at {reply.limit} characters")
        return
    reply.limit = max(floor, reply.limit * 2 // 3)
    log.info("job %s: Slack refused a message as too long; now %d characters per message",
             reply.job_id, reply.limit)
    if reply.mode == "stream" and op.kind == "start":
        return
    reply.rewrite()


def _transient(reply: Reply, op: SlackCall, why: str) -> None:
    reply.failures += 1
    if reply.failures > reply.env.tuning.max_failures:
        reply.give_up(f"{op.kind}: {why} ({reply.failures} failures)")
        return
    delay = min(30.0, 0.5 * 2 ** (reply.failures - 1))
    reply.retry_at = time.monotonic() + delay
    log.warning("job %s: %s failed (%s); retry in %.1f s", reply.job_id, op.kind, why, delay)
    if op.kind == "post":
        reply.reconcile = op.index
    elif op.kind in ("append", "stop"):
        # Unknown whether Slack took the text: rewrite the whole message instead.
        reply.msgs[op.index].sent = None
        reply.rewrite()
