"""A guard for code that must not make the host wait on the device (the engine's step)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostSync(TorchDispatchMode):
    """Fails on every op that makes the host read a device value, or copy python data to
    it, and logs the rest. (multinomial checks its input on the host; a python scalar in
    `t[:, i] = x` is a CPU scalar that becomes a fill, and stays allowed.)"""

    FORBIDDEN = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "multinomial",
                 "equal", "is_nonzero")

    def __init__(self, allow_uploads: bool = False) -> None:
        """`allow_uploads`: count tensors built from python data (host-to-device copies, which
        do not wait for the device) in `uploads` instead of failing."""
        super().__init__()
        self.ops: list[str] = []
        self.allow_uploads = allow_uploads
        self.uploads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func)
        if any(f in name for f in self.FORBIDDEN):
            raise AssertionError(f"host sync: {name}")
        if "lift_fresh" in name and args[0].dim() > 0:
            if not self.allow_uploads:
                raise AssertionError("a tensor built from python data")
            self.uploads += 1
        if "index" in name and any(isinstance(a, list) and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in a) for a in args):
            raise AssertionError(f"boolean-mask indexing (a nonzero): {name}")
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostSync]:
    def refuse(*_: object) -> None:
        raise AssertionError("host sync: tolist/numpy")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "tolist", refuse)
        m.setattr(torch.Tensor, "numpy", refuse)
        with HostSync() as mode:
            yield mode
