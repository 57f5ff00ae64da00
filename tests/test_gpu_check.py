"""``bench/gpu_check.py --dry-run`` runs every step of the GPU proof at tiny sizes on CPU and ends
with one JSON object carrying each step's keys (the GPU run fills the same keys with real sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_check.py"


def test_dry_run_runs_every_step_and_prints_one_json_object():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "gpu_check" and result["dry_run"] is True and result["ok"] is True, result
    attention = result["correctness"]["attention"]
    for causal in ("bidirectional", "causal"):
        assert attention[f"documents_{causal}"]["ok"] is True
        assert attention[f"varlen_{causal}"]["skipped"] == "varlen_attn (FlashAttention/cuDNN) needs CUDA"
        assert "no CPU backward" in attention[f"flex_{causal}"]["skipped"]
    assert result["correctness"]["training"]["ok"] is True
    for shape in ("esm2_650M", "llama_1B"):
        speed = result["speed"][shape]
        assert speed["foundry"]["tokens_per_s"] > 0 and speed["transformers"]["tokens_per_s"] > 0 and speed["ratio"] > 0
        assert {"mfu", "padding_fraction", "model_tflops"} <= speed["foundry"].keys()
    assert result["embeddings"]["ok"] is True and result["embeddings"]["mean_embedding_max_diff"] < 1e-3
    assert result["memory"]["plain"]["loss_finite"] and result["memory"]["activation_checkpointing"]["loss_finite"]


def test_without_a_gpu_and_without_dry_run_it_says_so():
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: gpu_check: no CUDA device visible to torch; "
                                                    "run with --dry-run to check the steps on CPU")
