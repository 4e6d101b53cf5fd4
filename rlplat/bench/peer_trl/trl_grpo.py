"""The TRL side of `rlplat bench peer`: TRL's GRPOTrainer (HF generate, no vLLM) on a job that peer.py wrote.

Run by peer.py as `<venv python> trl_grpo.py JOB.json RESULT.json` in the venv that has trl; never imported by
rlplat (this folder has no __init__.py, so `rlplat bench` does not list it, and rlplat does not need trl).
The job names the local model directory, the prompts and answers, the batch shape and the hyperparameters; the
result holds, per training step, the mean reward, the wall time of the step and the generated tokens.
Offline: the model is a local directory and HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

T_LAUNCH = time.time()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def digit_accuracy(completion_ids: list[list[int]], answer_ids: list[list[int]], eos_token_id: int) -> list[float]:
    """rlplat's `digit_accuracy`: the fraction of positions of `answer + EOS` that the completion matches.

    >>> digit_accuracy([[5, 6, 1], [5, 7]], [[5, 6], [5, 6]], 1)
    [1.0, 0.3333333333333333]
    """
    out = []
    for resp, ans in zip(completion_ids, answer_ids, strict=True):
        target = list(ans) + [eos_token_id]
        out.append(sum(1 for j, t in enumerate(target) if j < len(resp) and resp[j] == t) / len(target))
    return out


def main(job_path: str, result_path: str) -> int:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    job = json.loads(open(job_path).read())
    tok = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    answer_ids = [tok(a, add_special_tokens=False).input_ids for a in job["answers"]]
    dataset = Dataset.from_dict({"prompt": job["prompts"], "answer_ids": answer_ids})
    per_step: dict[str, Any] = {"reward_mean": [], "num_tokens": [], "step_s": [], "end_s": []}

    def reward(prompts, completions, completion_ids, answer_ids, **_):  # called once per step (one generation batch)
        rewards = digit_accuracy(completion_ids, answer_ids, tok.eos_token_id)
        per_step["reward_mean"].append(sum(rewards) / len(rewards))
        per_step["num_tokens"].append(float(sum(len(c) for c in completion_ids)))
        return rewards

    reward.__name__ = "digit_accuracy"

    class Clock(TrainerCallback):
        """Wall time of each step (generate + reward + update), and the time since training began at its end."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = self.t0 = time.perf_counter()
            per_step["setup_s"] = time.time() - T_LAUNCH

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            per_step["step_s"].append(now - self.t0)
            per_step["end_s"].append(now - self.begin)

    num_samples = job["num_prompts_per_step"] * job["num_samples_per_prompt"]
    args = GRPOConfig(
        output_dir=job["output_dir"], max_steps=job["num_steps"], seed=job["seed"], data_seed=job["seed"],
        per_device_train_batch_size=num_samples, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=job["num_samples_per_prompt"], max_completion_length=job["max_new_tokens"],
        temperature=job["temperature"], top_p=1.0, top_k=0, beta=0.0, num_iterations=1, epsilon=0.2,
        loss_type="dapo", scale_rewards="group",  # token-mean PPO-clip loss, group-normalized advantages: as rlplat
        learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, bf16=False, fp16=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    result = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
              "wall_s": time.time() - T_LAUNCH, **per_step}  # setup_s: launch to on_train_begin
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
