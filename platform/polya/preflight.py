"""Before a run starts: is its storage reachable and are its models where the spec says? One line per
problem, naming the spec field and the fix — instead of a traceback from a worker minutes later."""
from __future__ import annotations

from polya.spec import PolyaRun


def _storage(uri: str, field: str = "storage.uri") -> str | None:
    from polya import storage

    if not storage.is_remote(uri):
        return None
    try:
        fs, path = storage.filesystem(uri)
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            return (f"{field}: bucket {bucket!r} does not exist or these credentials cannot see it "
                    f"(create it, or fix the URI or the stage pods' credentials)")
    except Exception as exc:  # noqa: BLE001 - backends raise their own types (botocore, gcsfs, …)
        return f"{field}: {uri} cannot be reached: {str(exc).splitlines()[0] or type(exc).__name__}"
    return None


def _sandbox(run: PolyaRun) -> list[str]:
    """Code benchmarks run generated programs in the sandbox: refuse the run here when it cannot work on this
    machine, not after the base model has been sampled."""
    from polya.benchmarks import detect_kind
    from polya.sandbox import unavailable

    for i, bench in enumerate(run.spec.evaluation.benchmarks):
        try:
            kind = detect_kind(bench)
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the stage that loads it
            continue
        reason = unavailable() if kind == "code" else None
        if reason:
            return [f"evaluation.benchmarks[{i}] ({bench.name}): a code benchmark runs its programs in the sandbox, "
                    f"which does not work here: {reason}"]
    return []


def problems(run: PolyaRun, evaluates: bool = True) -> list[str]:
    """What would stop ``run``, one line each (empty when it can start). ``evaluates``: the steps to run include
    evaluation (then code benchmarks need a working sandbox on this machine)."""
    from polya.models import ModelNotAvailable, resolve

    spec = run.spec
    stores = [("storage.uri", spec.storage.uri)]
    if spec.storage.artifacts and spec.storage.artifacts != spec.storage.uri:
        stores.append(("storage.artifacts", spec.storage.artifacts))
    found = [p for p in (_storage(uri, field) for field, uri in stores) if p]
    models = [(spec.model.name, spec.model.revision, "model.name")]
    if spec.selfGeneration.model is not None:
        models.append((spec.selfGeneration.model.name, spec.selfGeneration.model.revision, "selfGeneration.model.name"))
    rm = spec.filtering.rewardModel
    if rm.name:
        models.append((rm.name, None, "filtering.rewardModel.name"))
    for name, revision, field in models:
        try:
            resolve(name, revision, field=field, download=False)
        except ModelNotAvailable as exc:
            found.append(str(exc))
    return found + (_sandbox(run) if evaluates else [])
