"""GPU check of the CUDA IPC weight-sync transport (`rlplat.rollout.weight_sync`): the learner's tensors travel as
JSON handles (`ipc_payload`) to another process, which opens them on its GPU (`open_ipc_handle`) and must read
bit-equal weights. Needs one CUDA GPU and torch + safetensors only (no vLLM, no Ray):

    PYTHONPATH=. python3 tools/ipc_check.py

Prints one JSON line: the checksums on both sides, whether they match, and the open time for the larger set."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from rlplat.rollout.weight_sync import ipc_payload, open_ipc_handle
from rlplat.weights import weights_checksum


def receive() -> None:
    """The receiving process: open every handle from stdin on GPU 0; print the checksum and the open time."""
    named = json.loads(sys.stdin.buffer.read())
    t0 = time.perf_counter()
    weights = [(name, open_ipc_handle(handle, 0)) for name, handle in named]
    torch.cuda.synchronize()
    open_s = time.perf_counter() - t0
    print(json.dumps({"checksum": weights_checksum(weights), "open_s": open_s, "num_tensors": len(weights)}))


def send(weights: dict[str, torch.Tensor]) -> dict[str, object]:
    payload = ipc_payload(weights)
    done = subprocess.run([sys.executable, __file__, "receive"], input=payload, capture_output=True, timeout=300)
    if done.returncode:
        raise SystemExit(f"receiver failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    got = json.loads(done.stdout.decode().strip().splitlines()[-1])
    expected = weights_checksum(weights)
    return {**got, "expected": expected, "match": got["checksum"] == expected, "payload_bytes": len(payload),
            "gib": sum(t.numel() * t.element_size() for t in weights.values()) / 2**30}


def main() -> None:
    torch.manual_seed(0)
    flat = torch.randn(4096, device="cuda")
    small = {  # dtypes a learner holds, and a view at an offset into a larger buffer (a flat parameter's slice)
        "model.embed_tokens.weight": torch.randn(64, 32, device="cuda", dtype=torch.bfloat16),
        "model.norm.weight": torch.randn(32, device="cuda"),
        "lm_head.weight": torch.randn(8, 16, device="cuda", dtype=torch.float16),
        "model.layers.0.mlp.up_proj.weight": flat[1000:1256].view(16, 16),
    }
    large = {f"model.layers.{i}.w": torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) for i in range(64)}
    result = {"small": send(small), "large": send(large), "gpu": torch.cuda.get_device_name(0)}
    print(json.dumps(result))
    if not (result["small"]["match"] and result["large"]["match"]):
        raise SystemExit("IPC weights differ")


if __name__ == "__main__":
    receive() if sys.argv[1:] == ["receive"] else main()
