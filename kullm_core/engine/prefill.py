"""How much prompt one pass of the local engine takes (`Pacer`).

While nothing decodes, a pass takes up to `max_prefill_tokens` of waiting prompts, packed
without padding, so simultaneous arrivals all get their first token after one pass. While
requests decode, prompt tokens ride in their decode step (the packed pass of
`engine/slots.py`): a step that carries `n` of them takes about `step + n * c`, so the pacer
gives the next fused step `share * step / c` tokens, and a running stream waits about
`(1 + share)` steps for its next token while a long prompt joins. `share` is 0.4: fused steps
scatter about 15 % around their target even on a quiet machine, and the goal is a gap of at
most 2 steps. When more requests wait for their first token than there are streams (a burst of
arrivals larger than one prefill pass), the share grows by that ratio: every user's wait
counts the same, whether for a first token or a next one.

Both `step` and `c` come from noisy pass times (on a shared CPU single steps scatter by half
their length, bench/prefill_bench.py), and an underestimate of `c` is what stalls streams: a
chunk sized from one lucky measurement took 4 steps' time. So `step` is the median of recent
plain steps, `c` is fitted over the last few fused steps together (their extra seconds over
their tokens), and a chunk grows at most by `GROWTH` over the largest one measured, so no
single estimate can make a chunk much larger than any that has been timed.
"""

from __future__ import annotations

import statistics
from collections import deque

MIN_CHUNK = 8
"""Below this a chunk makes too little progress for the step it stretches."""

GROWTH = 1.25
"""A chunk is at most this times the largest measured chunk (of the recent fused steps)."""


class Pacer:
    """Prompt tokens for the next pass, from measured pass times."""

    def __init__(self, cap: int, share: float = 0.4, window: int = 8) -> None:
        self.cap, self.share = max(cap, MIN_CHUNK), share
        self._steps: deque[float] = deque(maxlen=window + 1)  # plain decode steps, seconds
        self._fused: deque[tuple[int, float]] = deque(maxlen=window // 2)  # (tokens, seconds)
        self.prefill_token_s = 0.0  # seconds per token of a pass with nothing decoding

    @property
    def step_s(self) -> float:
        """A decode step without prompt tokens (median of the recent ones; 0: none yet)."""
        return statistics.median(self._steps) if self._steps else 0.0

    @property
    def token_s(self) -> float:
        """Extra seconds per prompt token riding in a decode step (0: not measured yet)."""
        if not self._fused or not self._steps:
            return 0.0
        step = self.step_s
        extra = sum(max(s - step, 0.0) for _, s in self._fused)
        return extra / sum(n for n, _ in self._fused)

    def took(self, decoding: int, prompt_tokens: int, seconds: float) -> None:
        """A pass ran: `decoding` rows stepped and `prompt_tokens` of prompts were prefilled."""
        if seconds <= 0:
            return
        if not decoding:
            if prompt_tokens:
                self.prefill_token_s = seconds / prompt_tokens
        elif not prompt_tokens:
            self._steps.append(seconds)
        elif self._steps:
            self._fused.append((prompt_tokens, seconds))

    def budget(self, waiting: int = 1, decoding: int = 1) -> int:
        """Prompt tokens the next decode step may carry while `waiting` requests wait for
        their first token behind `decoding` streams. Each waiting request weighs as much as
        a stream: when more wait than stream, the prompts' share of the step grows by that
        ratio (a burst of arrivals is not held to the pace meant for one joining prompt)."""
        step, per_token = self.step_s, self.token_s
        if not step:
            return self.cap
        share = self.share * max(1.0, waiting / max(decoding, 1))
        if per_token:
            n = share * step / per_token
        elif self._fused:  # measured as free (noise): only the growth bound holds
            n = float(self.cap)
        elif self.prefill_token_s:  # first guess from a pass of prompts alone: a large pass
            # runs more tokens a second than a small chunk does (about 1.6x in
            # bench/prefill_bench.py), hence half
            n = 0.5 * share * step / self.prefill_token_s
        else:
            return self.cap
        if self._fused:
            n = min(n, GROWTH * max(t for t, _ in self._fused))
        return max(MIN_CHUNK, min(self.cap, round(n)))
