"""CUDA IPC weight sync without pickle: a `reduce_tensor` handle travels as plain JSON and comes back as the same
arguments for torch's `rebuild_cuda_tensor` (the device index replaced); anything else is refused. No GPU needed:
the handle is built by hand in the layout torch's `reduce_tensor` returns for a CUDA tensor."""

from __future__ import annotations

import json

import pytest
import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor

from rlplat.rollout.weight_sync import decode_ipc_handle, encode_ipc_handle


def _args(device: int = 3) -> tuple:
    return (torch.nn.Parameter, torch.Size([4, 8]), (8, 1), 0, torch.storage.TypedStorage, torch.bfloat16, device,
            b"\x00cuda-ipc\xff", 64, 128, False, b"/torch_ref_42", 7, None, True)


def test_a_handle_round_trips_through_json_onto_this_gpu() -> None:
    sent = json.loads(json.dumps(encode_ipc_handle((rebuild_cuda_tensor, _args(device=3)))))
    assert decode_ipc_handle(sent, 0) == _args(device=0)


def test_only_tensor_classes_and_dtypes_are_rebuilt() -> None:
    good = json.loads(json.dumps(encode_ipc_handle((rebuild_cuda_tensor, _args()))))
    for key, value in (("tensor_cls", "Popen"), ("storage_cls", "system"), ("dtype", "cuda")):
        with pytest.raises(ValueError, match="not an IPC handle of a tensor"):
            decode_ipc_handle({**good, key: value}, 0)
    with pytest.raises(ValueError, match="not a CUDA tensor's IPC handle"):
        encode_ipc_handle((print, _args()))
