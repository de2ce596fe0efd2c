"""How much prompt one pass of the local engine takes (`Pacer`).

While nothing decodes, a pass takes up to `max_prefill_tokens` of waiting prompts, packed
without padding, so simultaneous arrivals all get their first token after one pass. While
requests decode, prompt tokens ride in their decode step (the packed pass of
`engine/slots.py`): a step that carries `n` of them takes about `step + n * c`, so the pacer
gives the next fused step `share * step / c` tokens, and a running stream waits about
`(1 + share)` steps for its next token while a long prompt joins. `share` is 0.5: measured
fused steps scatter about 15 % around their target (bench/prefill_bench.py), and the goal is a
gap of at most 2 steps.
"""

from __future__ import annotations

MIN_CHUNK = 8
"""Below this a chunk makes too little progress for the step it stretches."""


class Pacer:
    """Prompt tokens for the next pass, from measured pass times."""

    def __init__(self, cap: int, share: float = 0.5) -> None:
        self.cap, self.share = max(cap, MIN_CHUNK), share
        self.step_s = 0.0  # decode step without prompt tokens, moving average
        self.token_s = 0.0  # extra seconds per prompt token riding in a decode step
        self.prefill_token_s = 0.0  # seconds per token of a pass with nothing decoding

    def took(self, decoding: int, prompt_tokens: int, seconds: float) -> None:
        """A pass ran: `decoding` rows stepped and `prompt_tokens` of prompts were prefilled."""
        if seconds <= 0:
            return
        if not decoding:
            if prompt_tokens:
                self.prefill_token_s = seconds / prompt_tokens
        elif not prompt_tokens:
            self.step_s = seconds if not self.step_s else 0.7 * self.step_s + 0.3 * seconds
        elif self.step_s:
            extra = max(seconds - self.step_s, 0.0) / prompt_tokens
            self.token_s = extra if not self.token_s else 0.5 * self.token_s + 0.5 * extra

    def budget(self) -> int:
        """Prompt tokens the next decode step may carry."""
        if not self.step_s or not (self.token_s or self.prefill_token_s):
            return self.cap
        if self.token_s:
            n = self.share * self.step_s / self.token_s
        else:  # first guess from a pass of prompts alone: a large pass runs more tokens a
            # second than a small chunk does (about 1.6x in bench/prefill_bench.py), hence half
            n = 0.5 * self.share * self.step_s / self.prefill_token_s
        return max(MIN_CHUNK, min(self.cap, round(n)))
