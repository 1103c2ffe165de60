"""GRPO seconds per step: Polya (vLLM rollouts behind Ray Serve + DeepSpeed learner) against TRL's
`GRPOTrainer` (transformers generation), same machine, same run, same configuration: SmolLM2-135M-Instruct
on builtin:arithmetic, the same prompts, group size, max tokens, learning rate, steps, reward (math-verify
correctness + 0.1 for writing \\boxed{}), no KL term. Prints s/step for each and the ratio TRL / Polya
(target >= 1.5), then the mean reward at the first and last step of a longer Polya run (at ``--long-lr``:
the comparison's 2e-6 barely moves a 135M model in 30 steps; one step's reward is 16 samples, so the means
of the first and last five steps are printed too).

    .venv/bin/python benchmarks/bench_grpo.py [--steps 3] [--long-steps 30] [--long-lr 1e-5]
    .venv/bin/python benchmarks/bench_grpo.py --steps 0          # the long run only

Per-step time excludes start-up on both sides (engine and model loading): Polya's is the sum of its
rollout / reference / learn / sync phases from steps.json, TRL's the wall time between step callbacks.
Both sides sample, so their answers differ in length; the seconds per 1k completion tokens are printed too.
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


def polya_grpo(model: str, steps: int, prompts: int, group: int, max_tokens: int, lr: float, root: Path,
               precision: str) -> list[dict]:
    from polya.artifacts import ArtifactStore
    from polya.spec import PolyaRun
    from polya.stages import grpo
    from polya.stages.common import StageContext

    run = PolyaRun.model_validate({
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "bench"},
        "spec": {"model": {"name": model, "maxModelLen": 2048, "dtype": "bfloat16" if precision == "bf16" else "float32"},
                 "dataset": {"source": "builtin:arithmetic", "limit": 256},
                 "storage": {"uri": str(root)}, "heuristics": {"count": 1, "fewShot": True},
                 "grpo": {"steps": steps, "promptsPerStep": prompts, "groupSize": group, "learningRate": lr,
                          "klCoef": 0.0, "workers": 1, "zeroStage": 0, "precision": precision, "microBatchSize": 4,
                          "formatReward": FORMAT_REWARD, "checkpointEvery": 10**6,
                          "rollout": {"maxTokens": max_tokens, "temperature": 1.0}},
                 "evaluation": {"samples": 1, "k": [1], "benchmarks": [{"name": "a", "source": "builtin:arithmetic"}]}},
    })
    ctx = StageContext(run=run, store=ArtifactStore(str(root)), stage="grpo", arm="vanilla", progress=False)
    grpo.run(ctx)
    return json.loads((ctx.artifact().local / "steps.json").read_text())


def trl_grpo(model_path: str, steps: int, prompts: int, group: int, max_tokens: int, lr: float, out: Path,
             precision: str) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from polya.answers import extract_answer
    from polya.data import arithmetic
    from polya.heuristics import build_messages
    from polya.verify import verify_one

    qs = arithmetic(256, seed=0, difficulty=[1, 2])
    data = Dataset.from_list([{"prompt": build_messages(q.question, None, few_shot=True), "answer": q.answer} for q in qs])

    def reward(completions, answer, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(verify_one(a, extract_answer(t)) == "correct") + (FORMAT_REWARD if "\\boxed{" in t else 0.0)
                for t, a in zip(texts, answer)]

    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    cfg = GRPOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=prompts * group,
                     gradient_accumulation_steps=1, num_generations=group, max_completion_length=max_tokens,
                     learning_rate=lr, beta=0.0, temperature=1.0, logging_steps=1, report_to=[], save_strategy="no",
                     use_cpu=True, bf16=precision == "bf16", use_vllm=False, seed=0)
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, callbacks=[Timer()])
    trainer.train()
    return times, lengths


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--long-steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-6)
    ap.add_argument("--long-lr", type=float, default=1e-5)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="both sides use it (rollout dtype too); auto: bf16 where this CPU computes it natively")
    args = ap.parse_args()
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


def compare(args, path: str, tmp: Path, precision: str) -> None:
    polya_rows = polya_grpo(args.model, args.steps, args.prompts, args.group, args.max_tokens, args.lr, tmp / "polya", precision)
    polya_s = [r["t_rollout"] + r["t_reference"] + r["t_learn"] + r["t_sync"] for r in polya_rows]
    trl_s, trl_len = trl_grpo(path, args.steps, args.prompts, args.group, args.max_tokens, args.lr, tmp / "trl", precision)
    # the first step of each carries one-off warm-up (compilation, allocator): compare the rest where possible
    p = sum(polya_s[1:]) / max(1, len(polya_s) - 1) if len(polya_s) > 1 else polya_s[0]
    t = sum(trl_s[1:]) / max(1, len(trl_s) - 1) if len(trl_s) > 1 else trl_s[0]
    print(f"config: {args.model}, {args.prompts} prompts x {args.group} completions, max_tokens {args.max_tokens}, "
          f"{args.steps} steps, lr {args.lr}, no KL, {precision} on both")
    print(f"polya  s/step: {p:7.2f}   (per step: {', '.join(f'{x:.1f}' for x in polya_s)})")
    print(f"TRL    s/step: {t:7.2f}   (per step: {', '.join(f'{x:.1f}' for x in trl_s)})")
    print(f"ratio TRL/polya = {t / p:.2f}x  (target >= 1.5x)")
    # sampled answers differ in length between the two runs: the same comparison per generated token
    n = args.prompts * args.group
    p_tok = [s / (r["response_len"] * n / 1000) for s, r in zip(polya_s, polya_rows)][1:] or [0.0]
    t_tok = [s / (m * n / 1000) for s, m in zip(trl_s, trl_len)][1:] or [0.0]
    pk, tk = sum(p_tok) / len(p_tok), sum(t_tok) / len(t_tok)
    print(f"per 1k completion tokens: polya {pk:.1f} s, TRL {tk:.1f} s, ratio {tk / pk:.2f}x")


if __name__ == "__main__":
    main()
