"""Generation engines: they receive a built prompt and yield text deltas, nothing else."""

from kullm_core.engine.base import Engine, EngineOutput, GenerationRequest, SamplingParams

__all__ = ["Engine", "EngineOutput", "GenerationRequest", "SamplingParams"]
