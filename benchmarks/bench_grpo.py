"""GRPO seconds per step: Polya (vLLM rollouts behind Ray Serve + DeepSpeed learner) against TRL's
`GRPOTrainer`, same machine, same run, same configuration: SmolLM2-135M-Instruct on builtin:arithmetic, the
same questions in the same order (TRL's dataset is the list Polya's steps draw, unshuffled), group size, max tokens, learning rate, steps, reward (math-verify correctness + 0.1 for writing
\\boxed{}), no KL term, token-level loss (TRL's default ``dapo`` = Polya's ``token``).

TRL rows, each in its own process:
* ``TRL`` — ``gradient_checkpointing=False`` (as Polya's learner) and transformers generation: the fastest
  configuration of TRL that runs on this CPU, the baseline of the ratio;
* ``TRL as shipped`` — TRL 1.16's defaults (``gradient_checkpointing=True``: activations recomputed);
* ``TRL + vLLM colocate`` — ``use_vllm=True, vllm_mode="colocate"``; where TRL's vLLM path fails on this
  machine its own error is printed in one line instead of a time.

Timing, the same scope on both sides: wall time from one step's end to the next (rollout, scoring,
learning, weight sync, logging: everything a step costs), start-up and the first step excluded. Both sides
sample, so answers differ in length: seconds per 1k completion tokens are printed too. Then the mean reward
at the first and last step of a longer Polya run (at ``--long-lr``).

    .venv/bin/python benchmarks/bench_grpo.py [--steps 3] [--long-steps 30] [--long-lr 1e-5]
    .venv/bin/python benchmarks/bench_grpo.py --long-steps 0          # the comparison only
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
FORMAT_REWARD = 0.1


def bench_run(model: str, steps: int, prompts: int, group: int, max_tokens: int, lr: float, root: Path,
              precision: str, micro: int = 4):
    """The Polya run both sides are configured from (TRL takes its questions, in its order, from it)."""
    from polya.spec import PolyaRun

    return PolyaRun.model_validate({
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "bench"},
        "spec": {"model": {"name": model, "maxModelLen": 2048, "dtype": "bfloat16" if precision == "bf16" else "float32"},
                 "selfGeneration": {"maxTokens": 64},  # not run: only has to fit maxModelLen
                 "dataset": {"source": "builtin:arithmetic", "limit": 256},
                 "storage": {"uri": str(root)}, "heuristics": {"count": 1, "fewShot": True},
                 "grpo": {"steps": steps, "promptsPerStep": prompts, "groupSize": group, "learningRate": lr,
                          "klCoef": 0.0, "workers": 1, "zeroStage": 0, "precision": precision, "microBatchSize": micro,
                          "formatReward": FORMAT_REWARD, "checkpointEvery": 10**6,
                          "rollout": {"maxTokens": max_tokens, "temperature": 1.0}},
                 "evaluation": {"samples": 1, "k": [1], "benchmarks": [{"name": "a", "source": "builtin:arithmetic"}]}},
    })


def step_questions(run) -> list:
    """Every step's questions, in the order Polya's GRPO draws them (`polya.stages.grpo.draw_questions`)."""
    from polya.data import load_questions
    from polya.stages.grpo import draw_questions, step_rng

    questions = load_questions(run.spec.dataset)[0]
    g = run.spec.grpo
    return [q for step in range(g.steps) for q in draw_questions(step_rng(run.spec.seed, step), questions, g.promptsPerStep)]


def polya_grpo(model: str, steps: int, prompts: int, group: int, max_tokens: int, lr: float, root: Path,
               precision: str, micro: int = 4) -> list[dict]:
    from polya.artifacts import ArtifactStore
    from polya.stages import grpo
    from polya.stages.common import StageContext

    run = bench_run(model, steps, prompts, group, max_tokens, lr, root, precision, micro)
    ctx = StageContext(run=run, store=ArtifactStore(str(root)), stage="grpo", arm="vanilla", progress=False)
    grpo.run(ctx)
    return json.loads((ctx.artifact().local / "steps.json").read_text())


#: TRL's configurations, by row name: GRPOConfig overrides
TRL_VARIANTS = {
    "TRL": {"gradient_checkpointing": False},
    "TRL as shipped": {},
    "TRL + vLLM colocate": {"gradient_checkpointing": False, "use_vllm": True, "vllm_mode": "colocate"},
}


def trl_grpo(model_path: str, steps: int, prompts: int, group: int, max_tokens: int, lr: float, out: Path,
             precision: str, overrides: dict) -> tuple[list[float], list[float]]:
    """(wall-clock time at each step's end, mean completion length per step) of TRL's GRPOTrainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from polya.answers import extract_answer
    from polya.heuristics import build_messages
    from polya.verify import verify_one

    # the questions Polya's steps draw, in order, and no shuffling: both sides answer the same questions
    qs = step_questions(bench_run(model_path, steps, prompts, group, max_tokens, lr, out, precision))
    data = Dataset.from_list([{"prompt": build_messages(q.question, None, few_shot=True), "answer": q.answer} for q in qs])

    def reward(completions, answer, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(verify_one(a, extract_answer(t)) == "correct") + (FORMAT_REWARD if "\\boxed{" in t else 0.0)
                for t, a in zip(texts, answer)]

    ends: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.time())

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    cfg = GRPOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=prompts * group,
                     gradient_accumulation_steps=1, num_generations=group, max_completion_length=max_tokens,
                     learning_rate=lr, beta=0.0, temperature=1.0, logging_steps=1, report_to=[], save_strategy="no",
                     use_cpu=True, bf16=precision == "bf16", seed=0, shuffle_dataset=False, **overrides)
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, callbacks=[Timer()])
    trainer.train()
    return ends, lengths


def trl_in_child(variant: str, args, path: str, tmp: Path, precision: str) -> dict:
    """One TRL configuration in its own process (a failing vLLM path must not take the benchmark down):
    {"ends", "lengths"} or {"error": TRL's own error, one line}."""
    return in_child(args, precision, "--trl-variant", variant, "--out", str(tmp / variant.replace(" ", "_")))


def in_child(args, precision: str, *extra: str) -> dict:
    """This script in a child mode, in its own process; the dict on its RESULT line or {"error": ...}."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--steps", str(args.steps), "--prompts", str(args.prompts), "--group",
           str(args.group), "--max-tokens", str(args.max_tokens), "--lr", str(args.lr), "--precision", precision,
           "--micro-batch", str(args.micro_batch),
           "--model", args.model, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    # it died without a RESULT line (a crash in a child process): the last error-looking line of its stderr
    lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line] or lines
    return {"error": f"exit {proc.returncode}: " + (errors[-1] if errors else "no output")[:300]}


def _child(args) -> None:
    from polya.models import resolve

    try:
        ends, lengths = trl_grpo(resolve(args.model), args.steps, args.prompts, args.group, args.max_tokens, args.lr,
                                 Path(args.out), args.precision, TRL_VARIANTS[args.trl_variant])
        print("RESULT " + json.dumps({"ends": ends, "lengths": lengths}), flush=True)
    except Exception as exc:  # noqa: BLE001 - TRL's own error is the row
        print("RESULT " + json.dumps({"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}), flush=True)


def parts_alone(model: str, prompts: int, group: int, max_tokens: int, precision: str, micro: int = 4,
                repeats: int = 3) -> dict:
    """A Polya step's two parts, each alone in this process with nothing else running: the step's
    generation on vLLM's offline ``LLM.generate`` (the same engine settings and prompts as the stage's
    rollout replica, ``n = group``) and the learner's step (`reference_logprobs` + `learn`, the stage's own
    functions, on a one-rank DeepSpeed engine configured as the stage's) on those completions. Returns the
    offline tokens/s and the learner's seconds per step (best of ``repeats`` after a warm-up, each)."""
    import math
    import os
    import random
    import socket
    from types import SimpleNamespace

    import torch

    from polya.data import arithmetic
    from polya.hardware import resolve_dtype, usable_cpus, use_learner_threads, vllm_cpu_reserved_cores
    from polya.heuristics import render_prompt
    from polya.models import resolve

    path = resolve(model)
    reserved = vllm_cpu_reserved_cores(usable_cpus())
    if reserved is not None:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(path)
    rng = random.Random(0)
    qs = arithmetic(256, seed=0, difficulty=[1, 2])
    picked = rng.sample(qs, prompts * (repeats + 1))
    texts = [render_prompt(tok, q.question, None, few_shot=True) for q in picked]
    llm = LLM(model=path, dtype=resolve_dtype("bfloat16" if precision == "bf16" else "float32"), max_model_len=2048,
              max_num_seqs=64, seed=0, enforce_eager=True, enable_prefix_caching=True)
    params = SamplingParams(n=group, temperature=1.0, max_tokens=max_tokens)
    llm.generate(texts[:prompts], params, use_tqdm=False)  # warm-up
    best, outs = 0.0, None
    for r in range(1, repeats + 1):
        t0 = time.perf_counter()
        outs = llm.generate(texts[r * prompts:(r + 1) * prompts], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        best = max(best, sum(len(c.token_ids) for o in outs for c in o.outputs) / dt)
    # the stage's rewards and advantages on the last pass's answers, so that `learned` skips what the stage would
    from polya.rl.grpo import group_advantages
    from polya.stages.grpo import _rewards
    from polya.verify import Verifier

    golds = [q.answer for q in picked[repeats * prompts:(repeats + 1) * prompts] for _ in range(group)]
    answers = [c.text for o in outs for c in o.outputs]
    verifier = Verifier(workers=1)
    rewards = _rewards(verifier, golds, answers, FORMAT_REWARD)[0]
    verifier.close()
    adv = group_advantages(torch.tensor(rewards).view(prompts, group)).flatten().tolist()
    seqs = [{"prompt_ids": list(o.prompt_token_ids), "ids": list(c.token_ids), "adv": adv[i * group + j]}
            for i, o in enumerate(outs) for j, c in enumerate(o.outputs)]
    del llm

    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from polya.rl.deepspeed_config import deepspeed_config
    from polya.rl.learner import adamw
    from polya.spec import GRPOSpec
    from polya.stages.grpo import learn, learned, reference_logprobs, seq_counts, shard

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    use_learner_threads(1)  # as the stage's learner worker does
    g = GRPOSpec(mu=1, klCoef=0.0, microBatchSize=micro, learningRate=2e-6, precision=precision, zeroStage=0,
                 rollout={"temperature": 1.0, "maxTokens": max_tokens}, promptsPerStep=prompts, groupSize=group)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    active = learned(seqs, g)  # as the stage: completions with a zero advantage are not run
    prepared = shard(active, 0, len(active), g.microBatchSize, tok.pad_token_id or tok.eos_token_id)
    cfg = deepspeed_config(0, precision, g.microBatchSize, max(1, math.ceil(len(seqs) / g.microBatchSize)), g.maxGradNorm)
    engine, *_ = deepspeed.initialize(model=net, optimizer=adamw(net.parameters(), g.learningRate, 0.01),
                                      config=cfg)
    learner = SimpleNamespace(engine=engine, world=1)
    learner_s = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        olds, refs = reference_logprobs(learner, None, g, prepared)
        learn(learner, g, prepared, olds, refs, seq_counts(seqs))
        learner_s.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    return {"tokens_per_s": best, "learner_s": min(learner_s[1:]),
            "learned_tokens": seq_counts(active)[0]}


def per_step(ends: list[float]) -> list[float]:
    """Seconds of each step after the first, from the wall-clock times at which steps ended."""
    return [b - a for a, b in zip(ends, ends[1:])]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3, help="steps per side; the first is excluded (warm-up)")
    ap.add_argument("--long-steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-6)
    ap.add_argument("--micro-batch", type=int, default=4, help="Polya's grpo.microBatchSize")
    ap.add_argument("--long-lr", type=float, default=1e-5)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="both sides use it (rollout dtype too); auto: bf16 where this CPU computes it natively")
    ap.add_argument("--trl", nargs="*", default=list(TRL_VARIANTS), choices=list(TRL_VARIANTS),
                    help="TRL rows to measure (default: all)")
    ap.add_argument("--trl-variant", help=argparse.SUPPRESS)  # child mode: one TRL row
    ap.add_argument("--parts", action="store_true", help=argparse.SUPPRESS)  # child mode: the parts alone
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_variant:
        _child(args)
        return
    if args.parts:
        print("RESULT " + json.dumps(parts_alone(args.model, args.prompts, args.group, args.max_tokens, args.precision,
                                                     args.micro_batch)),
              flush=True)
        return
    from polya.hardware import resolve_precision
    from polya.models import resolve

    precision = resolve_precision(args.precision)

    path = resolve(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="polya-bench-grpo-"))
    if args.steps:
        compare(args, path, tmp, precision)
    if args.long_steps:
        rows = polya_grpo(args.model, args.long_steps, args.prompts, args.group, args.max_tokens, args.long_lr,
                          tmp / "long", precision)
        scored = [r for r in rows if "reward_mean" in r]
        head, tail = scored[:5], scored[-5:]
        print(f"polya {args.long_steps}-step run (lr {args.long_lr}): mean reward step 1 = {rows[0]['reward_mean']:.3f}, "
              f"step {len(rows)} = {rows[-1]['reward_mean']:.3f}; first 5 steps {_mean(head, 'reward_mean'):.3f} "
              f"(pass rate {_mean(head, 'pass_rate'):.3f}), last 5 {_mean(tail, 'reward_mean'):.3f} "
              f"(pass rate {_mean(tail, 'pass_rate'):.3f})")


def _avg(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def compare(args, path: str, tmp: Path, precision: str) -> None:
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2: the first step is warm-up and is not timed")
    n = args.prompts * args.group
    print(f"config: {args.model}, {args.prompts} prompts x {args.group} completions, max_tokens {args.max_tokens}, "
          f"{args.steps} steps (first excluded), lr {args.lr}, no KL, token-level loss, {precision} on both; "
          f"time = wall clock from one step's end to the next; learner batches: Polya micro-batches of {args.micro_batch} "
          f"(packed: prompts once, no padding; zero-advantage completions not run), TRL one batch of {n}", flush=True)
    polya_rows = polya_grpo(args.model, args.steps, args.prompts, args.group, args.max_tokens, args.lr, tmp / "polya",
                            precision, args.micro_batch)
    p_s = per_step([r["t_end"] for r in polya_rows])
    p_tok = [s / (r["response_len"] * n / 1000) for s, r in zip(p_s, polya_rows[1:])]
    phases = {k: _avg([r[k] for r in polya_rows[1:]]) for k in ("t_rollout", "t_reference", "t_learn", "t_sync")}
    print(f"{'polya':<22} s/step {_avg(p_s):7.2f}   s per 1k completion tokens {_avg(p_tok):6.2f}   "
          f"(steps: {', '.join(f'{x:.1f}' for x in p_s)}; phases: "
          + ", ".join(f"{k[2:]} {v:.1f}" for k, v in phases.items())
          + f"; learner ran {_avg([r['learned_completions'] for r in polya_rows[1:]]):.1f} of {n} completions:"
          " the rest had advantage 0)", flush=True)
    parts = in_child(args, precision, "--parts")
    if "error" in parts:
        print(f"parts alone: failed: {parts['error']}")
    else:
        # each of Polya's steps: its completion tokens at the offline engine's speed, plus the learner's step
        # alone scaled to the tokens that step's learner ran (the learner alone ran the offline run's own
        # completions, a different number of tokens: its cost grows with them on top of a shared prompt)
        gen = [r["response_len"] * n / parts["tokens_per_s"] for r in polya_rows[1:]]
        learn_s = [parts["learner_s"] * r["learned_tokens"] / max(parts["learned_tokens"], 1.0) for r in polya_rows[1:]]
        alone = [a + b for a, b in zip(gen, learn_s)]
        ratio = [s / a for s, a in zip(p_s, alone)]
        print(f"{'polya parts alone':<22} s/step {_avg(alone):7.2f}   (generation at vLLM offline's "
              f"{parts['tokens_per_s']:.0f} tok/s: {_avg(gen):.1f} s + learner step alone {_avg(learn_s):.1f} s "
              f"[{parts['learner_s']:.1f} s for {parts['learned_tokens']:.0f} learned tokens]; in-stage "
              f"{_avg([r['t_rollout'] for r in polya_rows[1:]]):.1f} + "
              f"{_avg([r['t_reference'] + r['t_learn'] for r in polya_rows[1:]]):.1f} s; "
              f"in-stage / parts = {_avg(ratio):.2f}x, target <= 1.15x)", flush=True)
    best = None
    for variant in args.trl:
        res = trl_in_child(variant, args, path, tmp, precision)
        if "error" in res:
            print(f"{variant:<22} does not run here: {res['error']}", flush=True)
            continue
        t_s = per_step(res["ends"])
        t_tok = [s / (m * n / 1000) for s, m in zip(t_s, res["lengths"][1:])]
        print(f"{variant:<22} s/step {_avg(t_s):7.2f}   s per 1k completion tokens {_avg(t_tok):6.2f}   "
              f"(steps: {', '.join(f'{x:.1f}' for x in t_s)}; {variant} / polya: {_avg(t_s) / _avg(p_s):.2f}x s/step, "
              f"{_avg(t_tok) / _avg(p_tok):.2f}x per token)", flush=True)
        if best is None or _avg(t_s) < best[1]:
            best = (variant, _avg(t_s), _avg(t_tok))
    if best:
        print(f"ratio fastest TRL ({best[0]}) / polya = {best[1] / _avg(p_s):.2f}x s/step, "
              f"{best[2] / _avg(p_tok):.2f}x per 1k completion tokens  (target >= 3x)")


if __name__ == "__main__":
    main()
