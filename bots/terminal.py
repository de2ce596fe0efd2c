"""`kullm chat`: a terminal adapter through the real pipeline (queue, worker, store)."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
import threading
import uuid
from typing import TextIO

from kullm_core.client import CoreClient, Submission
from kullm_core.replies.fold import ReplyFold
from kullm_core.text_clean import clean_text
from kullm_core.texts import error_text, t
from kullm_core.wire import ConversationRef, UserRef

log = logging.getLogger(__name__)

HELP = (
    "/reset  new conversation\n/stop   stop the reply being written\n"
    "/retry  write the last answer again\n/forget delete everything stored of you\n"
    "/help   this help\n/quit   leave"
)


class TerminalChat:
    """Reads lines, prints streamed replies. `/stop` works while a reply streams."""

    def __init__(self, client: CoreClient, lang: str = "ko", out: TextIO = sys.stdout) -> None:
        self.client = client
        self.lang = lang
        self.out = out
        name = getpass.getuser()
        self.user = UserRef(platform="cli", id=name, name=name, lang=lang)
        self.conv = ConversationRef(platform="cli", chat=name, user=name)

    def _print(self, text: str, end: str = "") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def ask(self, text: str) -> int:
        """Send one message and print its streamed reply. Returns an exit status."""
        text = clean_text(text)
        sub = await self.client.submit(self.conv, self.user, text, f"cli:{uuid.uuid4().hex}")
        return await self._show(sub)

    async def retry(self) -> int:
        """Regenerate the last answer (the core's `/retry`, as on every platform)."""
        sub = await self.client.retry(self.conv, self.user, f"cli:{uuid.uuid4().hex}")
        if sub is None:
            self._print(t("nothing_to_retry", self.lang), "\n")
            return 1
        return await self._show(sub)

    async def _show(self, sub: Submission) -> int:
        if sub.error is not None:
            self._print(error_text(sub.error, self.lang), "\n")
            return 1
        if await self.client.warming():
            self._print(t("warming_up", self.lang), "\n")
        elif sub.position > 1:
            self._print(t("queued", self.lang, position=sub.position), "\n")
        view, shown = ReplyFold(self.lang), ""
        async for entry_id, event in self.client.events(sub.job_id):
            change = view.apply(event, entry_id)
            if change == "reset" and shown:  # a worker died: the new attempt starts over
                self._print("\n")
                shown = ""
            if view.text.startswith(shown):
                self._print(view.text[len(shown):])
            else:  # the final text differs from what streamed (cut, restarted): show it whole
                self._print("\n" + view.text)
            shown = view.text
            if view.over:
                self._print(("\n" + view.note if view.note else ""), "\n")
                return 0 if view.phase == "done" else 1
        return 1

    async def command(self, cmd: str) -> None:
        """A slash command: run here, never sent to the model as text."""
        name, _, arg = cmd.partition(" ")
        if name == "/reset":
            await self.client.reset(self.conv)
            self._print(t("reset", self.lang), "\n")
        elif name == "/stop":
            job = await self.client.cancel(self.conv)
            self._print(t("stop_requested" if job else "nothing_to_stop", self.lang), "\n")
        elif name == "/forget" and arg.strip() == "yes":
            turns = await self.client.forget(self.user.platform, self.user.id)
            self._print(t("forgot", self.lang, turns=turns), "\n")
        elif name == "/forget":
            self._print(t("forget_confirm", self.lang) + "  (/forget yes)", "\n")
        else:
            self._print(HELP, "\n")

    async def repl(self) -> int:
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def _read() -> None:
            # Bytes that are not UTF-8 (or a pasted lone surrogate) must not kill the reader:
            # they arrive as U+FFFD, and the question is still answered.
            stream = getattr(sys.stdin, "buffer", None)
            for line in stream if stream is not None else sys.stdin:
                text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
                loop.call_soon_threadsafe(lines.put_nowait, clean_text(text.rstrip("\r\n")))
            loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=_read, daemon=True).start()
        self._print("KULLM3 — /help for commands", "\n")
        current: asyncio.Task[int] | None = None
        while True:
            self._print("" if current else "> ")
            line = await lines.get()
            if line is None or line.strip() in ("/quit", "/exit"):
                break
            cmd = line.strip()
            if cmd in ("/stop", "/help") or (cmd.startswith("/") and cmd != "/retry"):
                await self.command(cmd)  # /stop works while a reply streams
            elif cmd:
                if current and not current.done():
                    await current
                current = asyncio.create_task(self.retry() if cmd == "/retry" else self.ask(cmd))
                current.add_done_callback(lambda _t: self._print("> "))
        if current and not current.done():
            await current
        return 0
