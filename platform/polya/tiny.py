"""Tiny random causal LMs with a real tokenizer, built offline in seconds (tests and benchmarks).

A byte-level BPE tokenizer is trained on a few hundred generated math strings, given a ChatML template
(the same one SmolLM2 uses), and paired with a 2-layer Llama or Qwen2 of hidden size 64. transformers,
DeepSpeed and vLLM all load the resulting folder like any hub checkpoint.
"""
from __future__ import annotations

import random
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(n: int, seed: int) -> list[str]:
    from polya.heuristics import CATALOGUE

    rng = random.Random(seed)
    words = "the a of and to is in what how many each total left more than sum product answer step".split()
    lines = [h.instruction for h in CATALOGUE]
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines.append(f"{' '.join(rng.choices(words, k=6))} {a} + {b} = {a + b}. \\boxed{{{a + b}}}")
        lines.append(f"Problem: {a} x {b}? So {a} * {b} = {a * b}; \\frac{{{a}}}{{{b or 1}}} (x+1)^2")
    return lines


def build_tokenizer(path: str | Path, vocab_size: int = 512, seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(300, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def build_tiny_model(
    path: str | Path,
    arch: str = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write a tiny random model + tokenizer to ``path`` and return it (~1-2 s on 2 cores)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, vocab_size=vocab_size, seed=seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 32),  # head_dim 32: vLLM's CPU attention has no kernel for 16
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        config = LlamaConfig(head_dim=32, **common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(str(path), safe_serialization=True)
    return path
