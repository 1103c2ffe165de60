"""transformers backend: the fallback where vLLM does not import. Batched `generate` in a worker thread."""
from __future__ import annotations

import asyncio
import threading

from polya.engines.base import Completion, EngineConfig, Sampling, check_token_limit
from polya.hardware import resolve_dtype


class HFEngine:
    def __init__(self, cfg: EngineConfig, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.model_name = cfg.served_name or cfg.model
        self.max_model_len = cfg.max_model_len
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, padding_side="left",
                                                       trust_remote_code=cfg.trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=getattr(torch, resolve_dtype(cfg.dtype)),
                                                          trust_remote_code=cfg.trust_remote_code).eval()
        # one model and one tokenizer for all requests: a fast tokenizer's padding settings change per call,
        # so concurrent calls (a GRPO step's spread) encode under the lock too
        self._lock = threading.RLock()
        self.weight_version = 0

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _generate_sync(self, prompts: list[str], s: Sampling) -> list[list[Completion]]:
        import torch

        out: list[list[Completion]] = []
        eos = self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                if s.seed is not None:
                    torch.manual_seed(s.seed + start)
                greedy = s.temperature == 0
                gen = self.model.generate(
                    **enc,
                    do_sample=not greedy,
                    temperature=None if greedy else s.temperature,
                    top_p=None if greedy else s.top_p,
                    top_k=None,
                    max_new_tokens=s.max_tokens,
                    num_return_sequences=s.n,
                    output_scores=True,
                    return_dict_in_generate=True,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
                scores = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
                width = enc["input_ids"].shape[1]
                for i, prompt_ids in enumerate(enc["input_ids"]):
                    mask = enc["attention_mask"][i].bool()
                    p_ids = prompt_ids[mask].tolist()
                    group = []
                    for j in range(s.n):
                        row = i * s.n + j
                        ids = gen.sequences[row, width:].tolist()
                        lps = scores[row].tolist()
                        finish = "length"
                        if eos in ids:
                            cut = ids.index(eos) + 1
                            ids, lps, finish = ids[:cut], lps[:cut], "stop"
                        group.append(
                            Completion(
                                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                                token_ids=ids,
                                logprobs=lps if s.logprobs else None,
                                finish_reason=finish,
                                prompt_tokens=len(p_ids),
                                prompt_token_ids=p_ids,
                            )
                        )
                    out.append(group)
        return out

    def _checked_generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]:
        with self._lock:
            for p in prompts:
                check_token_limit(self.count_tokens(p), sampling.max_tokens, self.max_model_len)
            return self._generate_sync(prompts, sampling)

    async def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]:
        return await asyncio.to_thread(self._checked_generate, prompts, sampling)

    def _load(self, blob: bytes) -> int:
        import safetensors.torch

        return self._load_state(safetensors.torch.load(blob))

    def _receive(self, group: dict, rank: int) -> int:
        from polya.rl.weight_sync import receive_group

        return self._load_state(dict(receive_group(group, rank, self.model.device)))

    def _load_state(self, state: dict) -> int:
        with self._lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            self.model.tie_weights()
        if unexpected:
            raise ValueError(f"update_weights: unexpected tensors {unexpected[:5]}")
        return len(state)

    async def update_weights(self, blob: bytes) -> int:
        n = await asyncio.to_thread(self._load, blob)
        self.weight_version += 1
        return n

    async def receive_weights(self, group: dict, rank: int) -> int:
        n = await asyncio.to_thread(self._receive, group, rank)
        self.weight_version += 1
        return n

    async def close(self) -> None:
        return None
