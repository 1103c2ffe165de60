"""The `PolyaRun` resource as pydantic v2 models: the one source of truth for configuration.

The CRD schema (`polya crd`), `polya validate`, the operator's admission checks and every stage read
these models. Field names are the camelCase names users write in YAML; Python code reads them with the
same names. Unknown fields are refused everywhere (``extra="forbid"``), and every rule a field has is
written as a constraint here so that it reaches the CRD (ranges, enums, patterns) or, for rules across
fields, as a ``model_validator`` plus a CEL rule (``x-kubernetes-validations``) in the CRD.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from polya.recipe import BASELINES, STAR_SELECTION

API_GROUP = "polya.dev"
API_VERSION = "v1alpha1"
KIND = "PolyaRun"
PLURAL = "polyaruns"
SHORT_NAMES = ["prun"]

#: URI schemes accepted for `spec.storage.uri` (no scheme = a local path). PVC mounts are local paths.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "hdfs")
#: built-in models (`builtin:<name>`); see polya.models
BUILTIN_MODELS = ("smollm2-135m-instruct",)
#: built-in question sets (`builtin:<name>`); see polya.data
BUILTIN_DATASETS = ("arithmetic",)
#: built-in reward models / encoders (`builtin:<name>`)
BUILTIN_ENCODERS = ("all-minilm-l6-v2",)
#: schemes a model or dataset may be read from, besides local paths and hub names
SOURCE_SCHEMES = ("builtin", "hf") + STORAGE_SCHEMES

_URI_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(//)?(.*)$")


def uri_scheme(uri: str) -> str | None:
    """The scheme of ``uri`` (``s3`` for ``s3://b/k``, ``builtin`` for ``builtin:x``), None for a path."""
    m = _URI_RE.match(uri)
    if not m or (len(m.group(1)) == 1 and m.group(2) is None):  # "C:\\" style drive letters
        return None
    return m.group(1).lower()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: the base of every resource model (unknown fields refused): `polya.sweep` builds the PolyaSweep on it too
StrictModel = _Model


class NotInKey:
    """Field metadata (``Annotated[T, NOT_IN_KEY]``): the field says where or how fast work runs (replicas,
    GPUs, checkpoint cadence, transport), not what it computes, so it stays out of stage cache keys. Every
    other field is in the key of the stages that read its section (`polya.recipe`): new fields by default."""

    def __repr__(self) -> str:
        return "NOT_IN_KEY"


NOT_IN_KEY = NotInKey()


def result_fields(model: BaseModel) -> dict[str, Any]:
    """``model`` as plain data without the fields marked NOT_IN_KEY (nested models and lists included)."""

    def plain(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return result_fields(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    fields = type(model).model_fields
    return {name: plain(getattr(model, name)) for name, info in fields.items()
            if not any(isinstance(m, NotInKey) for m in info.metadata)}


PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _check_source(value: str, *, what: str, builtins: tuple[str, ...]) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be empty")
    scheme = uri_scheme(value)
    if scheme is None:
        return value  # a local path or a hub name (org/name)
    if scheme not in SOURCE_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r} in {value!r}; use a local path, a hub name, "
            f"or one of: {', '.join(s + ':' for s in SOURCE_SCHEMES)}"
        )
    if scheme == "builtin":
        name = value.split(":", 1)[1]
        if name not in builtins:
            raise ValueError(
                f"unknown builtin {name!r}; known: {', '.join('builtin:' + b for b in builtins)}"
            )
    return value


#: the fewest prompt tokens a stage's maxTokens must leave in model.maxModelLen: the shortest prompt the stages
#: render (system turn + instruction + a one-line question, no few-shot example, no heuristic) is ~100 tokens,
#: a heuristic with its few-shot example ~300. A floor, not a fit: `polya validate` measures the real prompts
#: of local datasets. Mirrored by a CEL rule in polya.crd.
MIN_PROMPT_TOKENS = 256


# --------------------------------------------------------------------------------------------- inputs
class ModelSpec(_Model):
    """The base model every stage starts from."""

    name: str = Field(
        min_length=1,
        description="Hub name (org/name), local path, storage URI, or builtin:smollm2-135m-instruct.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto",
        description="Weights dtype of the rollout engines. auto: bfloat16 where the hardware computes it natively "
        "(GPUs, AVX512/AMX CPUs), float32 elsewhere (bf16 is ~4x slower than fp32 on AVX2-only CPUs).",
    )
    trustRemoteCode: bool = Field(default=False, description="Allow custom modelling code from the hub.")
    maxModelLen: PositiveInt = Field(
        default=4096,
        description="Context length for engines and learners: prompt + generated tokens of every request. Each "
        f"stage's maxTokens (selfGeneration, grpo.rollout, evaluation) must leave at least {MIN_PROMPT_TOKENS} "
        "tokens of it for the prompt; `polya validate` also warns where a local dataset's longest rendered prompt "
        "would not fit.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_source(v, what="model.name", builtins=BUILTIN_MODELS)

    def revision_for(self, ref: str) -> str | None:
        """The hub revision of a model reference of this run: ``revision`` for the base model itself,
        none for anything derived from it (an artifact's ``model/``)."""
        return self.revision if ref == self.name else None


class QuestionSourceSpec(_Model):
    """Where questions and gold answers come from, and which fields hold them."""

    source: str = Field(
        min_length=1,
        description="builtin:arithmetic, hf://org/name, a .jsonl/.json/.parquet path or storage URI.",
    )
    split: str = Field(default="train", min_length=1, description="Split of a hub dataset.")
    questionField: str = Field(default="problem", min_length=1, description="Field holding the question.")
    answerField: str = Field(default="answer", min_length=1, description="Field holding the gold answer.")
    answerFormat: Literal["auto", "raw", "hash", "boxed"] = Field(
        default="auto",
        description="raw: the cell as is; hash: text after '####' (GSM8K); boxed: last \\boxed{} of the cell; "
        "auto: first element of a list, else the '####' tail if present, else raw.",
    )
    idField: str | None = Field(default=None, description="Field holding a stable question id (else the row index).")
    limit: PositiveInt | None = Field(default=None, description="Use only the first `limit` questions.")
    seed: int = Field(default=0, description="Seed of builtin generators (use different seeds for training and benchmark sets).")
    difficulty: list[Annotated[int, Field(ge=0, le=3)]] = Field(
        default_factory=lambda: [1, 2],
        min_length=1,
        description="Difficulty levels for builtin:arithmetic (0: single-digit sums and differences; 1: one step "
        "with numbers up to 60; 2: two steps; 3: remainders and working backwards); ignored for other sources.",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, what="source", builtins=BUILTIN_DATASETS)


class DatasetSpec(QuestionSourceSpec):
    """The training questions (self-generation, STaR and GRPO prompts)."""


class HeuristicsSpec(_Model):
    """Which catalogue heuristics to use: the first `count` of the nested catalogue, or explicit ids."""

    count: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None, description="Use the first `count` heuristics (1-64; nested: n=4 is inside n=16)."
    )
    names: list[str] | None = Field(
        default=None, min_length=1, description="Explicit heuristic ids from the catalogue (`polya heuristics`)."
    )
    fewShot: bool = Field(default=True, description="Add one worked example to every prompt.")

    @field_validator("names")
    @classmethod
    def _known_names(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        from polya.heuristics import CATALOGUE_IDS

        unknown = [n for n in names if n not in CATALOGUE_IDS]
        if unknown:
            raise ValueError(f"unknown heuristic id(s) {unknown}; `polya heuristics` lists the 64 known ids")
        if len(set(names)) != len(names):
            raise ValueError("an id is listed twice")
        return names

    @model_validator(mode="after")
    def _one_of(self) -> "HeuristicsSpec":
        if self.count is not None and self.names is not None:
            raise ValueError("set either heuristics.count or heuristics.names, not both")
        if self.count is None and self.names is None:
            self.count = 16
        return self

    def selected_ids(self) -> list[str]:
        from polya.heuristics import select

        return [h.id for h in select(count=self.count, names=self.names)]


class StorageSpec(_Model):
    uri: str = Field(min_length=1, description="Run folder: a local path (embedded, PVC) or s3:// gs:// az:// URI.")
    artifacts: str | None = Field(
        default=None, min_length=1,
        description="Where the content-addressed stage outputs live (default: uri). Runs naming the same folder share "
        "every stage whose inputs are equal, as a PolyaSweep's children do; results and the report stay in uri.",
    )

    def artifact_root(self) -> str:
        return self.artifacts or self.uri

    @field_validator("uri", "artifacts")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = uri_scheme(v)
        if scheme is not None and scheme not in STORAGE_SCHEMES:
            raise ValueError(
                f"unsupported storage scheme {scheme!r}; use a local path or one of: "
                + ", ".join(s + "://" for s in STORAGE_SCHEMES)
            )
        return v


# ------------------------------------------------------------------------------------------- resources
class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|K|M|G|T)?$")]
DnsLabel = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
#: the volume the operator mounts the run's manifest from (SPEC_MOUNT): a run's own volumes cannot take it
RESERVED_VOLUME, RESERVED_MOUNT = "polya-spec", "/etc/polya"
#: where a cluster stage's driver (`polya stage`, on the Ray head) exports its metrics: the head pod declares
#: it as containerPort `polya-metrics`, which the chart's PodMonitor scrapes (KubeRay's "metrics", 8080, is Ray's)
STAGE_METRICS_PORT = 9464
STAGE_METRICS_PORT_NAME = "polya-metrics"


def _exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    set_ = [f for f in fields if getattr(model, f) is not None]
    if len(set_) != 1:
        raise ValueError(f"{what} needs exactly one of {', '.join(fields)}; got {', '.join(set_) or 'none'}")


class KeyRef(_Model):
    name: str = Field(min_length=1, description="The Secret's or ConfigMap's name (in the run's namespace).")
    key: str = Field(min_length=1)
    optional: bool | None = None


class EnvVarSource(_Model):
    secretKeyRef: KeyRef | None = None
    configMapKeyRef: KeyRef | None = None

    @model_validator(mode="after")
    def _one(self) -> "EnvVarSource":
        _exactly_one(self, ("secretKeyRef", "configMapKeyRef"), "env[].valueFrom")
        return self


class EnvVar(_Model):
    """An environment variable of every stage pod: a literal value, or a key of a Secret/ConfigMap (tokens and
    keys belong in Secrets, never in the PolyaRun)."""

    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    valueFrom: EnvVarSource | None = None

    @model_validator(mode="after")
    def _value_or_source(self) -> "EnvVar":
        if self.value is not None and self.valueFrom is not None:
            raise ValueError(f"env {self.name}: set value or valueFrom, not both")
        return self


class NamedRef(_Model):
    name: str = Field(min_length=1)
    optional: bool | None = None


class EnvFromSource(_Model):
    """Every key of a Secret or ConfigMap as environment variables (e.g. HF_TOKEN, AWS_ACCESS_KEY_ID)."""

    prefix: str | None = None
    secretRef: NamedRef | None = None
    configMapRef: NamedRef | None = None

    @model_validator(mode="after")
    def _one(self) -> "EnvFromSource":
        _exactly_one(self, ("secretRef", "configMapRef"), "envFrom[]")
        return self


class PVCSource(_Model):
    claimName: str = Field(min_length=1)
    readOnly: bool | None = None


class SecretVolumeSource(_Model):
    secretName: str = Field(min_length=1)
    optional: bool | None = None


class ConfigMapVolumeSource(_Model):
    name: str = Field(min_length=1)
    optional: bool | None = None


class EmptyDirSource(_Model):
    medium: Literal["", "Memory"] | None = None
    sizeLimit: Quantity | None = None


class Volume(_Model):
    """A volume of every stage pod: a PersistentVolumeClaim (shared storage, model caches), a Secret, a
    ConfigMap or an emptyDir (e.g. Memory-backed /dev/shm for NCCL)."""

    name: DnsLabel
    persistentVolumeClaim: PVCSource | None = None
    secret: SecretVolumeSource | None = None
    configMap: ConfigMapVolumeSource | None = None
    emptyDir: EmptyDirSource | None = None

    @model_validator(mode="after")
    def _one(self) -> "Volume":
        _exactly_one(self, ("persistentVolumeClaim", "secret", "configMap", "emptyDir"), f"volume {self.name}")
        if self.name == RESERVED_VOLUME:
            raise ValueError(f"volume name {RESERVED_VOLUME!r} is the operator's (the run's manifest): pick another")
        return self


class VolumeMount(_Model):
    name: DnsLabel = Field(description="A volume of cluster.volumes.")
    mountPath: str = Field(pattern=r"^/", description="Absolute path in the Ray container.")
    readOnly: bool | None = None
    subPath: str | None = None


class ClusterSpec(_Model):
    """How stage RayJobs are placed on a cluster (ignored by the embedded runner)."""

    image: str | None = Field(default=None, description="Container image for Ray pods (operator default if empty).")
    rayVersion: str = Field(default="2.60.0", description="Ray version of the image.")
    cpusPerWorker: Annotated[float, Field(gt=0)] = Field(default=8, description="CPU request per Ray worker pod.")
    memoryPerWorker: Quantity = "32Gi"
    gpuResource: str | None = Field(
        default=None, description="Extended resource name of a GPU (default: the operator's, nvidia.com/gpu unless "
        "the chart's stages.gpuResource says otherwise).")
    imagePullSecrets: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Secrets in the run's namespace that stage pods pull their image with "
        "(added to the operator's stages.imagePullSecrets).")
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    serviceAccountName: str | None = None
    headCpu: Quantity | None = Field(default=None, description="CPU of each Ray head pod (operator default: 2).")
    headMemory: Quantity | None = Field(default=None, description="Memory of each Ray head pod (operator default: 8Gi).")
    env: list[EnvVar] = Field(default_factory=list, description="Environment of every Ray container.")
    envFrom: list[EnvFromSource] = Field(default_factory=list, description="Secrets/ConfigMaps as environment.")
    volumes: list[Volume] = Field(default_factory=list, description="Volumes of every stage pod.")
    volumeMounts: list[VolumeMount] = Field(default_factory=list, description="Where the Ray container mounts them.")
    activeDeadlineSeconds: PositiveInt | None = Field(
        default=None, description="Wall-clock limit of each stage attempt (the RayJob's activeDeadlineSeconds): "
        "past it KubeRay stops the job (DeadlineExceeded) and the operator retries the stage as for any failure.")
    queueName: Annotated[str, Field(min_length=1, max_length=63)] | None = Field(
        default=None, description="Kueue LocalQueue for the stage RayJobs: they are created suspended with the "
        "kueue.x-k8s.io/queue-name label, and Kueue starts each when its whole Ray cluster fits (gang admission).")

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> "ClusterSpec":
        names = {v.name for v in self.volumes}
        unknown = sorted({m.name for m in self.volumeMounts} - names)
        if unknown:
            raise ValueError(f"cluster.volumeMounts name volumes that cluster.volumes does not declare: {unknown}")
        if len(names) != len(self.volumes):
            raise ValueError("cluster.volumes declares a name twice")
        paths = [m.mountPath.rstrip("/") or "/" for m in self.volumeMounts]
        if any(p == RESERVED_MOUNT or p.startswith(RESERVED_MOUNT + "/") for p in paths):
            raise ValueError(f"{RESERVED_MOUNT} is where the operator mounts the run's manifest: mount elsewhere")
        if len(set(paths)) != len(paths):
            raise ValueError("cluster.volumeMounts uses a mountPath twice")
        return self


class SamplingSpec(_Model):
    temperature: Annotated[float, Field(ge=0.0)] = Field(default=1.0, description="0 = greedy.")
    topP: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    maxTokens: PositiveInt = Field(default=1024, description="Generated tokens per completion.")


class EngineSpec(_Model):
    """Inference engines behind Ray Serve (vLLM where it imports): how many, on what, which backend."""

    replicas: Annotated[PositiveInt, NOT_IN_KEY] = 1
    gpusPerReplica: Annotated[float, Field(ge=0), NOT_IN_KEY] = Field(default=0, description="0 on CPU machines.")
    engine: Literal["auto", "vllm", "transformers"] = Field(
        default="auto", description="auto = vLLM where it imports, else transformers."
    )
    maxNumSeqs: Annotated[PositiveInt, NOT_IN_KEY] = Field(default=64, description="Concurrent sequences per engine.")


class RolloutSpec(SamplingSpec, EngineSpec):
    """Rollout engines behind Ray Serve and how they sample."""


# ------------------------------------------------------------------------------------------------ stages
class SelfGenerationSpec(RolloutSpec):
    samplesPerHeuristic: PositiveInt = Field(default=4, description="Completions per (question, heuristic).")
    temperature: Annotated[float, Field(ge=0.0)] = 0.8
    maxTokens: PositiveInt = 2048
    model: ModelSpec | None = Field(
        default=None,
        description="The model that writes the traces; default: spec.model (self-generation). Another model here is "
        "the distillation baseline (traces from a larger model, the same filtering, SFT of spec.model on them).",
    )


class RewardModelSpec(EngineSpec):
    """The adherence scorer; a judge runs on its own engines (`engine`, `maxNumSeqs`, `gpusPerReplica`)."""

    kind: Literal["judge", "classifier", "embedding"] = Field(
        default="embedding",
        description="judge: generative judge; classifier: sequence-classification RM; embedding: sentence-encoder similarity.",
    )
    name: str | None = Field(
        default=None,
        description="Model of the scorer (required for judge and classifier; default builtin:all-minilm-l6-v2).",
    )
    @model_validator(mode="after")
    def _name_needed(self) -> "RewardModelSpec":
        if self.name is None:
            if self.kind != "embedding":
                raise ValueError(f"filtering.rewardModel.name is required when kind is {self.kind!r}")
            self.name = "builtin:all-minilm-l6-v2"
        else:
            _check_source(self.name, what="rewardModel.name", builtins=BUILTIN_MODELS + BUILTIN_ENCODERS)
        return self


class FilteringSpec(_Model):
    rewardModel: RewardModelSpec = Field(default_factory=RewardModelSpec)
    keepIncorrect: Fraction = Field(
        default=0.0, description="With keep: correct, a fraction of the groups' best incorrect traces admitted too.")
    mode: Literal["heuristic", STAR_SELECTION] = Field(  # type: ignore[valid-type]
        default="heuristic", description="heuristic: best trace per (question, heuristic); star: one per question."
    )
    keep: Literal["correct", "incorrect"] = Field(
        default="correct",
        description="Which verdict the kept traces have: correct (the recipe) or incorrect (the ablation: SFT on "
        "traces whose answer is wrong, one per (question, heuristic), at most incorrectPerQuestion per question).",
    )
    incorrectPerQuestion: PositiveInt | None = Field(
        default=None,
        description="With keep: incorrect, how many incorrect approaches (heuristics) per question are kept, chosen "
        "by seed among those with an incorrect trace; default: all of them.",
    )

    @model_validator(mode="after")
    def _keep(self) -> "FilteringSpec":
        if self.keep == "incorrect" and self.keepIncorrect > 0:
            raise ValueError("filtering.keepIncorrect adds incorrect traces to the correct ones: with keep 'incorrect' "
                             "every kept trace is incorrect already; set keepIncorrect to 0 (or keep to 'correct')")
        if self.keep == "correct" and self.incorrectPerQuestion is not None:
            raise ValueError("filtering.incorrectPerQuestion applies to keep 'incorrect': set keep to 'incorrect', "
                             "or drop incorrectPerQuestion")
        return self
    verifyTimeoutSeconds: Annotated[float, Field(gt=0)] = Field(default=5.0, description="Per-item math-verify limit.")
    verifyWorkers: Annotated[PositiveInt, NOT_IN_KEY] = Field(default=2, description="Processes verifying answers.")


class LearnerSpec(_Model):
    learningRate: Annotated[float, Field(gt=0)] = 1.0e-5
    workers: Annotated[PositiveInt, NOT_IN_KEY] = Field(default=1, description="Ray Train workers (one DeepSpeed rank each).")
    gpusPerWorker: Annotated[float, Field(ge=0), NOT_IN_KEY] = 0
    zeroStage: Annotated[int, Field(ge=0, le=3)] = Field(default=2, description="DeepSpeed ZeRO stage 0-3.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="Learner precision. auto: bf16 where the hardware computes it natively, else fp32."
    )
    gradientCheckpointing: bool = False
    microBatchSize: PositiveInt = Field(default=1, description="Sequences per worker per forward pass.")
    weightDecay: Annotated[float, Field(ge=0)] = 0.0
    maxGradNorm: Annotated[float, Field(gt=0)] = 1.0
    warmupRatio: Fraction = 0.03
    checkpointEvery: Annotated[PositiveInt, NOT_IN_KEY] = Field(default=50, description="Optimizer steps between checkpoints.")
    keepCheckpoints: Annotated[PositiveInt | None, NOT_IN_KEY] = Field(
        default=None,
        description="Newest step checkpoints kept while the stage trains: older ones are deleted once a newer one is "
        "complete (OpenRLHF max_ckpt_num). null: every one.",
    )
    deleteCheckpointsOnCommit: Annotated[bool, NOT_IN_KEY] = Field(
        default=False,
        description="Delete the stage's checkpoints once its artifact is committed (they serve only to resume the "
        "uncommitted stage; a DeepSpeed checkpoint is ~13 bytes per parameter: 1.8 GB for a 135M model). Sweeps "
        "and small disks want true.",
    )
    offloadOptimizer: bool = False


class MidTrainingSpec(LearnerSpec):
    enabled: Annotated[bool, NOT_IN_KEY] = True
    epochs: PositiveInt = 3
    batchSize: PositiveInt = Field(default=64, description="Global batch (sequences per optimizer step).")
    maxSeqLen: PositiveInt = 4096


class GRPOSpec(LearnerSpec):
    enabled: Annotated[bool, NOT_IN_KEY] = True
    dataset: DatasetSpec | None = Field(
        default=None,
        description="The RL questions; default: spec.dataset. Budget-matched arms that differ in dataset.limit set "
        "the same grpo.dataset so that they share their RL questions.",
    )
    learningRate: Annotated[float, Field(gt=0)] = 1.0e-6
    steps: PositiveInt = 500
    promptsPerStep: PositiveInt = 64
    groupSize: Annotated[int, Field(ge=2)] = Field(default=8, description="Completions per prompt (>= 2).")
    klCoef: Annotated[float, Field(ge=0)] = Field(default=0.001, description="0 loads no reference model.")
    clipRatio: Annotated[float, Field(gt=0, lt=1)] = 0.2
    clipRatioHigh: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="Upper clip (DAPO clip-higher); default = clipRatio."
    )
    mu: PositiveInt = Field(default=1, description="Inner optimisation epochs per batch of rollouts.")
    lossAggregation: Literal["token", "sequence", "constant"] = Field(
        default="token",
        description="token: sum over every completion token of the step / their count (DAPO); sequence: mean per "
        "completion, then over the step's completions (the original GRPO); constant: sum over the step's tokens / "
        "(completions x rollout.maxTokens), Dr. GRPO's length-unbiased normaliser (use with scaleRewards: false).",
    )
    scaleRewards: bool = Field(
        default=True,
        description="Divide advantages by the group std; false is Dr. GRPO's advantage (pair with "
        "lossAggregation: constant for its loss).",
    )
    reward: Literal["auto", "math", "code", "choice"] = Field(
        default="auto",
        description="How completions are rewarded (1 right, 0 not), by the evaluation grader of that kind "
        "(polya.graders): math: math-verify against the gold answer; code: the completed function run against the "
        "question's tests in the sandbox (HumanEval-format rows); choice: the chosen letter (MuSR-format rows); "
        "auto: read off the dataset's first row, as for evaluation benchmarks.",
    )
    formatReward: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="Reward for a boxed final answer (math rewards only).")
    dynamicSampling: bool = Field(default=False, description="Resample groups whose rewards are all equal.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    weightSync: Annotated[Literal["collective", "objectStore"], NOT_IN_KEY] = Field(
        default="collective",
        description="How each step's weights reach the rollout replicas. collective: learner rank 0 broadcasts "
        "over a process group with the vLLM workers (NCCL on GPUs, gloo on CPU; 6x faster than objectStore even "
        "on CPU), a replica on the learner's own GPU maps them by CUDA IPC; objectStore: safetensors bytes through "
        "Ray's object store (no direct learner-replica network).",
    )

    @model_validator(mode="after")
    def _sampled_rollouts(self) -> "GRPOSpec":
        if self.rollout.temperature <= 0:
            raise ValueError(
                "grpo.rollout.temperature must be > 0: a group of greedy completions is identical (no signal) and "
                "the learner's logprobs are taken at the sampling temperature; use e.g. 1.0")
        return self

    @property
    def clip_high(self) -> float:
        return self.clipRatioHigh if self.clipRatioHigh is not None else self.clipRatio


class BenchmarkSpec(QuestionSourceSpec):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Short name used in reports.")
    split: str = Field(default="test", min_length=1)
    kind: Literal["auto", "math", "code", "choice"] = Field(
        default="auto",
        description="How completions are prompted and graded (polya.graders). math: the math prompt, answers "
        "checked by math-verify; code: HumanEval format (prompt, test, entry_point), the completed function run "
        "against the tests in the sandbox; choice: MuSR format (context, question, choices, answer index), the "
        "chosen letter compared with the gold one; auto: read off the file's first row (HumanEval fields: code; "
        "context/narrative with choices: choice; anything else: math).",
    )


class CompositionSpec(_Model):
    """Which of all 64 catalogue heuristics evaluation chains use (whatever heuristics.count), and how they combine."""

    enabled: bool = True
    classifier: Literal["embedding", "judge"] = Field(
        default="embedding",
        description="judge: filtering's judge model reads a rubric listing the catalogue; embedding: the CPU "
                    "sentence-encoder matcher.")
    threshold: Annotated[float, Field(ge=-1, le=1)] = Field(
        default=0.4, description="Similarity at or above which a heuristic counts as used (embedding classifier; "
                                 "0.4 agrees best with tests/data/composition_labelled.jsonl)."
    )
    chains: Annotated[int, Field(ge=1, le=100000)] = Field(
        default=256, description="Evaluation chains classified: an equal share per benchmark, seeded by the run seed.")
    keptChains: Annotated[int, Field(ge=0, le=100000)] = Field(
        default=1024, description="Kept (mid-training) traces classified to find the heuristic pairs seen "
                                  "together there; 0 skips the never-seen-together figures.")


class EvaluationSpec(RolloutSpec):
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    samples: Annotated[int, Field(ge=1, le=1024)] = Field(default=64, description="Completions per problem.")
    k: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], min_length=1)
    temperature: Annotated[float, Field(ge=0.0)] = 0.6
    serve: Annotated[bool, NOT_IN_KEY] = Field(
        default=False, description="Keep rollout and reward-model endpoints up (RayService).")
    composition: CompositionSpec = Field(default_factory=CompositionSpec)

    @field_validator("k")
    @classmethod
    def _k_le_samples(cls, k: list[int], info: ValidationInfo) -> list[int]:
        samples = info.data.get("samples")
        bad = [x for x in k if samples is not None and x > samples]
        if bad:
            raise ValueError(
                f"every k must be <= evaluation.samples ({samples}); got k={bad}: raise samples or drop those k"
            )
        return sorted(set(k))

    @field_validator("benchmarks")
    @classmethod
    def _unique_names(cls, benchmarks: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        names = [b.name for b in benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {names}")
        return benchmarks


def budget_model(stage: Any) -> tuple[str, ...]:
    """The model block whose maxModelLen bounds ``stage``'s prompts: self-generation's own model where one is
    set (``selfGeneration.model``, else ``model``), the run's model for the rest."""
    from polya.recipe import Stage

    return (stage.section, "model") if stage.name == Stage.SELFGEN else ("model",)


def token_budgets() -> list[tuple[Any, tuple[str, ...]]]:
    """The stages that generate beside a prompt: (stage definition, path of the block holding its maxTokens:
    the stage's section, then the sampling block inside it)."""
    from polya.recipe import STAGES, Stage

    return [(STAGES[stage], (STAGES[stage].section, *inner))
            for stage, inner in ((Stage.SELFGEN, ()), (Stage.GRPO, ("rollout",)), (Stage.EVALUATE, ()))]


class PolyaRunSpec(_Model):
    model: ModelSpec
    dataset: DatasetSpec
    heuristics: HeuristicsSpec = Field(default_factory=HeuristicsSpec)
    storage: StorageSpec
    selfGeneration: SelfGenerationSpec = Field(default_factory=SelfGenerationSpec)
    filtering: FilteringSpec = Field(default_factory=FilteringSpec)
    midTraining: MidTrainingSpec = Field(default_factory=MidTrainingSpec)
    grpo: GRPOSpec = Field(default_factory=GRPOSpec)
    evaluation: EvaluationSpec
    baselines: list[Literal[tuple(a.value for a in BASELINES)]] = Field(  # type: ignore[misc]
        default_factory=list, description="Extra arms: vanilla (GRPO without mid-training), star (STaR + GRPO)."
    )
    seed: int = 0
    suspend: bool = Field(default=False, description="Pause: no new stage starts while true.")
    maxStageRetries: Annotated[int, Field(ge=0, le=20)] = Field(default=2, description="Retries of a failed stage.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @model_validator(mode="after")
    def _cross(self) -> "PolyaRunSpec":
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError("baselines lists an arm twice")
        if self.evaluation.composition.classifier == "judge" and self.filtering.rewardModel.kind != "judge":
            raise ValueError("evaluation.composition.classifier 'judge' uses the judge of filtering.rewardModel: "
                             "set filtering.rewardModel.kind to 'judge' (with a name), or use 'embedding'")
        return self

    def generator(self) -> ModelSpec:
        """The model that writes the self-generated traces (`selfGeneration.model`, default the run's model)."""
        return self.selfGeneration.model or self.model

    def rl_dataset(self) -> DatasetSpec:
        """The questions GRPO draws (`grpo.dataset`, default the run's dataset)."""
        return self.grpo.dataset or self.dataset

    @model_validator(mode="after")
    def _token_budgets(self) -> "PolyaRunSpec":
        """Every enabled stage's maxTokens leaves MIN_PROMPT_TOKENS of model.maxModelLen for the prompt (else
        every request of that stage is refused at run time by the engines' token check)."""
        errors = []
        for stage, path in token_budgets():
            if not stage.enabled(self):
                continue  # a disabled stage sends no request
            block: Any = self
            for part in path:
                block = getattr(block, part)
            own = budget_model(stage) != ("model",) and self.selfGeneration.model is not None
            where, limit = ("selfGeneration.model", self.generator().maxModelLen) if own else ("model", self.model.maxModelLen)
            if block.maxTokens + MIN_PROMPT_TOKENS > limit:
                room = max(limit - block.maxTokens, 0)
                fix = (f"lower it to <= {limit - MIN_PROMPT_TOKENS} or raise spec.{where}.maxModelLen to >= "
                       f"{block.maxTokens + MIN_PROMPT_TOKENS}" if limit > MIN_PROMPT_TOKENS
                       else f"raise spec.{where}.maxModelLen to >= {block.maxTokens + MIN_PROMPT_TOKENS}")
                msg = (f"{block.maxTokens} generated tokens leave {room} of {where}.maxModelLen ({limit}) for the "
                       f"prompt, fewer than {MIN_PROMPT_TOKENS}: {fix}")
                errors.append({"type": "value_error", "loc": (*path, "maxTokens"), "input": block.maxTokens,
                               "ctx": {"error": ValueError(msg)}})
        if errors:  # one error per field, each at its own path (spec.evaluation.maxTokens: ...)
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


# ------------------------------------------------------------------------------------------------ status
StagePhase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
RunPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
#: phases a run never leaves: the operator stops ticking it
TERMINAL_RUN_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})


class StageStatus(_Model):
    name: str
    phase: StagePhase = "Pending"
    attempts: NonNegInt = 0
    rayJobName: str | None = None
    startTime: str | None = None
    finishTime: str | None = None
    artifactUri: str | None = None
    message: str | None = None
    figures: dict[str, float] = Field(default_factory=dict)


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None


class PolyaRunStatus(_Model):
    phase: RunPhase = "Pending"
    currentStage: str | None = None
    stages: list[StageStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    observedGeneration: int | None = None
    message: str | None = None


#: the longest PolyaRun name: the CRD refuses longer ones at admission, `polya validate` too
MAX_RUN_NAME = 40


class ObjectMeta(BaseModel):
    """Only the metadata fields Polya reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow")
    # KubeRay refuses RayJob names over 47 characters: <run> + "-" + a 6-character suffix must fit
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=MAX_RUN_NAME)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PolyaRun(_Model):
    apiVersion: Literal["polya.dev/v1alpha1"] = f"{API_GROUP}/{API_VERSION}"
    kind: Literal["PolyaRun"] = KIND
    metadata: ObjectMeta
    spec: PolyaRunSpec
    status: PolyaRunStatus | None = None



def load_run(doc: dict[str, Any]) -> PolyaRun:
    """Validate a parsed manifest (raises pydantic.ValidationError)."""
    return PolyaRun.model_validate(doc)
