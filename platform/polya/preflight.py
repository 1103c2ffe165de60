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


def _code_sources(run: PolyaRun, only: str | None) -> list[tuple[str, str]]:
    """(field, what) of each question source in scope whose programs the sandbox would run: code benchmarks
    (evaluation) and a code-rewarded GRPO dataset."""
    from polya.benchmarks import detect_kind
    from polya.recipe import Stage

    spec, out = run.spec, []
    sources = []
    if only in (None, Stage.EVALUATE):
        sources += [(f"evaluation.benchmarks[{i}]", f"{b.name}: a code benchmark", b, b.kind)
                    for i, b in enumerate(spec.evaluation.benchmarks)]
    if only in (None, Stage.GRPO) and spec.grpo.enabled:
        sources.append(("grpo.reward", "code rewards", spec.rl_dataset(), spec.grpo.reward))
    for field, what, source, kind in sources:
        try:
            code = (detect_kind(source) if kind == "auto" else kind) == "code"
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the stage that loads it
            continue
        if code:
            out.append((field, what))
    return out


def _sandbox(run: PolyaRun, only: str | None = None) -> list[str]:
    """Code benchmarks and code rewards run generated programs in the sandbox: refuse the run here when it
    cannot work on this machine, not after the earlier stages have run."""
    from polya.sandbox import unavailable

    sources = _code_sources(run, only)
    reason = unavailable() if sources else None
    if not reason:
        return []
    return [f"{field} ({what}) runs its programs in the sandbox, which does not work here: {reason}"
            for field, what in sources]


def problems(run: PolyaRun, only: str | None = None) -> list[str]:
    """What would stop ``run``, one line each (empty when it can start). ``only``: the one stage to run (its
    arms), else every stage: the sandbox is checked only for stages in scope that run programs."""
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
    return found + _sandbox(run, only)
