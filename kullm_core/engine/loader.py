"""Finding and loading the model and tokenizer, and building the configured engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kullm_core.errors import ModelLoadError
from kullm_core.settings import Settings

log = logging.getLogger(__name__)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def resolve_model_path(settings: Settings) -> tuple[str, bool]:
    """Return (path or hub id to load, is_tiny). Builds the tiny model when allowed.

    Nothing is downloaded unless `model.allow_download`: a hub id must already be in the
    local Hugging Face cache.
    """
    m = settings.model
    tiny_dir = Path(settings.data_dir) / "tiny-model"
    if m.tiny_fallback == "always":
        return str(_ensure_tiny(tiny_dir)), True
    if Path(m.path).is_dir():
        return m.path, (Path(m.path) / "TINY_MODEL").exists()
    if m.allow_download or _in_hf_cache(m.path, "tokenizer_config.json" if m.engine == "openai"
                                        else "config.json"):
        return m.path, False
    if m.engine == "openai":  # its history fitting needs the real tokenizer: never the tiny one
        raise ModelLoadError(
            f"the openai engine needs the tokenizer of `{m.path}` (setting model.path) to fit "
            "history into the context; only its small tokenizer files are needed: "
            f"`hf download {m.path} --include '*.json' --include '*.jinja' --include "
            "'tokenizer.model'`, or set model.path to a folder that has them"
        )
    if m.tiny_fallback == "auto" and not _has_cuda():
        log.warning(
            "model %s is not on this machine and there is no CUDA GPU: using the TINY RANDOM "
            "model in %s instead. Replies will be gibberish. Set model.path to a KULLM3 folder "
            "(or model.tiny_fallback=never) for real answers.", m.path, tiny_dir,
        )
        return str(_ensure_tiny(tiny_dir)), True
    raise ModelLoadError(
        f"model `{m.path}` not found locally (setting model.path); download it first "
        f"(about 21.4 GB): `hf download {m.path}`, or set model.allow_download=true"
    )


def _in_hf_cache(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
        return isinstance(found, str)
    except Exception:
        return False


def _ensure_tiny(tiny_dir: Path) -> Path:
    if not (tiny_dir / "config.json").exists():
        from kullm_core.tinymodel import build_tiny_model

        log.info("building the tiny model in %s", tiny_dir)
        build_tiny_model(tiny_dir)
    return tiny_dir


def load_tokenizer(path: str, allow_download: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer from `{path}`: {exc}") from None


def _dtype(name: str, device: str) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(path: str, settings: Settings) -> Any:
    """Load once: accelerate's device_map on GPU (bf16/fp16), fp32 on CPU."""
    from transformers import AutoModelForCausalLM

    m = settings.model
    device = m.device
    if device == "auto":
        device = "cuda" if _has_cuda() else "cpu"
    dtype = _dtype(m.dtype, device)
    log.info("loading model %s on %s (%s)...", path, device, str(dtype).replace("torch.", ""))
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": not m.allow_download}
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}
        if not m.allow_offload:
            check_fits(weight_bytes(path, dtype, m.allow_download), gpu_bytes(device),
                       str(dtype).replace("torch.", ""))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the model from `{path}`: {exc}") from None
    if device.startswith("cuda") and not m.allow_offload:
        check_placement(getattr(model, "hf_device_map", None) or {})
    if not device.startswith("cuda"):
        model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    log.info("model loaded: %.2fB parameters", n / 1e9)
    return model


def weight_bytes(path: str, dtype: Any, allow_download: bool) -> int:
    """Bytes of the model's weights in `dtype`, counted on the meta device (nothing loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=not allow_download)
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in meta.parameters()) * dtype.itemsize


def gpu_bytes(device: str) -> int:
    """Memory of the GPU(s) the model may use: all visible ones for `cuda`, else one."""
    import torch

    if device == "cuda":
        ids = range(torch.cuda.device_count())
    else:
        ids = range(int(device.partition(":")[2] or 0), int(device.partition(":")[2] or 0) + 1)
    return sum(torch.cuda.get_device_properties(i).total_memory for i in ids)


_HEADROOM = 0.92  # CUDA context, activations and some KV cache need the rest


def check_fits(weights: int, gpu: int, dtype: str) -> None:
    """A GPU too small for the weights is an error at start: accelerate would otherwise put
    layers on the CPU silently (and the bot would be very slow)."""
    if weights > gpu * _HEADROOM:
        raise ModelLoadError(
            f"the model needs {weights / 2**30:.1f} GiB in {dtype} but the GPU memory is "
            f"{gpu / 2**30:.1f} GiB: use a larger GPU (or several), a quantized model behind "
            "the openai engine (vLLM/TGI/SGLang), or set model.allow_offload=true to put layers "
            "on the CPU on purpose (very slow)"
        )


def check_placement(device_map: dict[str, Any]) -> None:
    """After loading: no layer may have landed on the CPU or disk unless offload is allowed."""
    off = sorted({str(d) for d in device_map.values() if str(d) in ("cpu", "disk")})
    if off:
        raise ModelLoadError(
            f"accelerate placed some layers on {' and '.join(off)}: the GPU memory is too "
            "small for this model and dtype (set model.allow_offload=true to accept that)"
        )


def build_engine(settings: Settings) -> tuple[Any, Any]:
    """Return (engine, tokenizer) as configured by `model.engine`."""
    path, tiny = resolve_model_path(settings)
    tokenizer = load_tokenizer(path, settings.model.allow_download)
    if settings.model.engine == "openai":
        from kullm_core.engine.openai import OpenAIEngine

        if tiny:
            log.warning("openai engine: fitting history with the TINY test tokenizer "
                        "(model.tiny_fallback = always); token counts will be wrong")
        return OpenAIEngine.from_settings(settings.model, settings.generation), tokenizer
    from kullm_core.engine.local import LocalEngine

    model = load_model(path, settings)
    engine = LocalEngine(
        model, tokenizer,
        max_batch_size=settings.batching.max_batch_size,
        max_batch_tokens=settings.batching.max_batch_tokens,
        max_prefill_tokens=settings.batching.max_prefill_tokens,
        prefill_chunk_tokens=settings.batching.prefill_chunk_tokens,
        max_len=settings.generation.context_window,
        decode_graphs=None if settings.batching.cuda_graphs else False,
        overlap=None if settings.batching.overlap else False,
    )
    if tiny:
        engine.name = "local (tiny random model)"
    return engine, tokenizer
