"""THE Ray boundary: every actor the driver starts and every call it makes to one goes through here.

`Workers` holds the rollout engines, the learner and the optional reward actor and offers what the loop needs from
them: generate, train, sync, recover, verify, save/load, shutdown. Every wait on a remote call has a deadline:
blocking calls go through `call`, awaited ones (APRIL, env episodes) through `RemoteEngine`, and both name the phase
and the spec key to change (`cluster.call_timeout_s`) when it passes. Nothing else in rlplat/driver imports ray.

Failures: a rollout actor that dies is restarted by Ray (`max_restarts`), gets the current weights and its work is
issued again (`Workers.retrying`); a learner that dies or hangs stops the run with the phase in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from rlplat import OFFLINE_ENV  # offline for every rlplat process and actor
from rlplat.actors.learner import LearnerActor
from rlplat.actors.placement_group import actor_options, cluster_gpu_count, release, reserve
from rlplat.actors.reward import RewardActor
from rlplat.actors.rollout import RolloutActor
from rlplat.config import RewardConfig, RunConfig
from rlplat.driver import chaos
from rlplat.learners.balance import split_batch
from rlplat.models import max_context_length
from rlplat.placement import PlacementPlan, check_gpus, plan_placement
from rlplat.rewards.basic import RewardInputs
from rlplat.rewards.registry import RewardError
from rlplat.rollout.engine import EngineOptions
from rlplat.rollout.sleep import AFTER_SYNC, BEFORE_SYNC, merge_engine_metrics
from rlplat.types import Group, Sample, SamplingOptions, TrainBatch

log = logging.getLogger("rlplat")
T = TypeVar("T")

TIMEOUT_KEY = "cluster.call_timeout_s"
MAX_ROLLOUT_RETRIES = 3
QUICK_CALL_TIMEOUT_S = 5.0  # abort and shutdown answer at once unless the actor is hung: no need to wait longer
ActorDied = RayActorError  # what a call to a dead actor raises; callers outside this module need not import ray


class Hung(TimeoutError):
    """A remote call passed its deadline: the actor is stopped, overloaded or deadlocked."""


def hung(phase: str, timeout_s: float, key: str = TIMEOUT_KEY) -> Hung:
    return Hung(f"{phase}: no answer within {timeout_s:g} s ({key}); the actor is hung, stopped or "
                f"starved of resources")


def call(refs: Any, phase: str, timeout_s: float, key: str = TIMEOUT_KEY) -> Any:
    """ray.get with a deadline: THE way this package waits for a remote call. `key`: the spec key to raise."""
    chaos.at(phase)  # fault injection for `rlplat bench faults --chaos`; inert unless RLPLAT_CHAOS is set
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise hung(phase, timeout_s, key) from None


async def acall(ref: Any, phase: str, timeout_s: float) -> Any:
    """`await ref` with a deadline (an ObjectRef is awaitable; the remote task itself is not cancelled)."""
    chaos.at(phase)
    try:
        return await asyncio.wait_for(ref, timeout_s)
    except TimeoutError:
        raise hung(phase, timeout_s) from None


class RemoteEngine:
    """A RolloutActor handle as the async worker APRIL and the episode loop drive (`generate`, `abort`)."""

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle, self.timeout_s = handle, timeout_s

    async def generate(self, samples: list[Sample], sampling: SamplingOptions, policy_version: int) -> list[Sample]:
        return await acall(self.handle.generate.remote(samples, sampling, policy_version), "generation",
                           self.timeout_s)

    async def abort(self) -> int:
        return await acall(self.handle.abort.remote(), "abort generation", min(QUICK_CALL_TIMEOUT_S, self.timeout_s))


# ----------------------------------------------------------------------------------------------------- start-up
def init_ray(cfg: RunConfig) -> None:
    """Attach to a cluster someone started on purpose, else start this run's own private local Ray instance.

    cluster.address `auto` attaches to the cluster of `ray job submit` or RAY_ADDRESS, else to the one `ray start`
    recorded on this machine, and never to another run's local instance: those are marked private (a key in Ray's
    KV store) and declined with a warning. `local` always starts a private instance; any other value attaches there.
    A private instance listens on 127.0.0.1 only (GCS, raylet, metrics endpoints) while cluster.dashboard_host is a
    loopback address, and Ray's token file is created 0600. Every process of the run (this one included) runs with
    the hub switched off (OFFLINE_ENV).
    """
    os.environ.update(OFFLINE_ENV)
    if ray.is_initialized():
        return
    env = {"env_vars": OFFLINE_ENV | {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}}
    address = cfg.cluster.address
    if address not in ("auto", "local"):
        ray.init(address=address, runtime_env=env)
        return
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    if address == "auto" and deliberate_cluster():
        try:
            ray.init(address="auto", runtime_env=env)
        except ConnectionError:  # the cluster `ray start` recorded has stopped since
            pass
        else:
            owner = _internal_kv_get(PRIVATE_RAY_KEY, namespace="rlplat")
            if owner is None:
                return
            log.warning("cluster.address auto: the Ray instance at %s is the private local instance of another run "
                        "(pid %s); starting this run's own", ray.get_runtime_context().gcs_address, owner.decode())
            ray.shutdown()
    _private_token_file()
    with _node_address_on_loopback(_is_loopback(cfg.cluster.dashboard_host)):
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, include_dashboard=False,
                 dashboard_host=cfg.cluster.dashboard_host, runtime_env=env)
    _internal_kv_put(PRIVATE_RAY_KEY, str(os.getpid()).encode(), namespace="rlplat")


PRIVATE_RAY_KEY = b"private_local_instance"  # KV key (namespace "rlplat") that marks a run's own local Ray


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def deliberate_cluster() -> bool:
    """A cluster was named (RAY_ADDRESS, set by `ray job submit` too) or started with `ray start` on this machine.
    Ray's own `auto` would also pick any local instance it finds among the running processes: another run's."""
    from ray._private.utils import read_ray_address  # the address file `ray start` writes (ray_current_cluster)

    return bool(os.environ.get("RAY_ADDRESS")) or read_ray_address() is not None


@contextlib.contextmanager
def _node_address_on_loopback(enabled: bool) -> Iterator[None]:
    """While a local instance starts: its node address is 127.0.0.1, so Ray binds its GCS, raylet, worker and
    Prometheus metrics ports (agent, dashboard, autoscaler) there instead of all interfaces. Ray does exactly this
    where it supports no clusters (macOS, Windows); its processes read the flag from the environment they inherit,
    this one from a module constant. Both are restored afterwards (the node address is then fixed)."""
    import ray._private.ray_constants as ray_constants

    flag = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(flag)
    if enabled:
        ray_constants.ENABLE_RAY_CLUSTER, os.environ[flag] = False, "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(flag, None)
        else:
            os.environ[flag] = saved[1]


def _private_token_file() -> None:
    """Ray (token auth, the default for a local instance) writes ~/.ray/auth_token readable by everyone: write it
    first, 0600, and make an existing one of ours 0600 too. Nothing to do when the token comes from RAY_AUTH_TOKEN
    or RAY_AUTH_TOKEN_PATH, or when RAY_AUTH_MODE switches token auth off."""
    import secrets
    import stat

    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or \
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what Ray itself generates: 256 random bits, hex
    except FileExistsError:
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
            log.info("made Ray's token file %s readable by its owner only (0600)", path)
    except OSError as e:  # a read-only home: Ray reports what it needs
        log.warning("could not write Ray's token file %s: %s", path, e)


def ray_job_tags() -> dict[str, str]:
    """Tags that say which Ray job ran this (and which submission, under `ray job submit`)."""
    tags = {"rlplat.ray_job_id": ray.get_runtime_context().get_job_id()} if ray.is_initialized() else {}
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        tags["rlplat.ray_submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
    return tags


def plan_for_cluster(cfg: RunConfig) -> PlacementPlan:
    """The placement plan on the attached Ray cluster; ConfigError with the numbers if it lacks the GPUs."""
    available = cluster_gpu_count()
    plan = plan_placement(cfg, available)
    check_gpus(plan, available, "the Ray cluster")
    return plan


def absolute_reward_paths(cfg: RewardConfig) -> RewardConfig:
    """User reward files (`file.py:fn`) as absolute paths: an actor's working directory is not the driver's."""
    def absolute(name: str) -> str:
        path, sep, fn = name.rpartition(":")
        return f"{Path(path).resolve()}:{fn}" if sep and path.endswith(".py") else name

    return dataclasses.replace(cfg, terms=tuple(dataclasses.replace(t, name=absolute(t.name)) for t in cfg.terms))


def engine_options(cfg: RunConfig, model_path: str = "") -> EngineOptions:
    """The spec's vLLM engine options, serving `model_path` (default: model.path)."""
    return EngineOptions(
        model_path=str(Path(model_path or cfg.model.path).resolve()),
        max_model_len=max_context_length(cfg.model.path),
        seed=cfg.experiment.seed,
        dtype=cfg.model.dtype,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        enforce_eager=cfg.rollout.enforce_eager,
        max_num_seqs=cfg.rollout.max_num_seqs,
        stream_interval=cfg.rollout.stream_interval,
        tensor_parallel_size=cfg.rollout.tensor_parallel_size,
        enable_sleep_mode=cfg.rollout.sleep_level > 0,
    )


# ------------------------------------------------------------------------------------------------------ workers
@dataclass
class Workers:
    rollout: list[Any]  # RolloutActor handles
    learner: Any = None  # LearnerActor handle of rank 0 (None when only engines run: `rlplat eval`)
    learners: list[Any] = dataclasses.field(default_factory=list)  # every learner rank (FSDP: learner.num_ranks)
    reward: Any = None  # RewardActor handle (placement.reward_actor); None: rewards are scored in the driver
    call_timeout_s: float = 600.0
    num_restarts: int = 0  # rollout actors restarted and re-synced during the run
    weight_sync: str = "bytes"  # placement.weight_sync, resolved: bytes | broadcast | ipc
    weight_group_open: bool = False  # broadcast: learner and engines have joined one process group
    placement_group: Any = None  # Ray placement group of a GPU plan (None on CPU)
    device: str = "cpu"  # the plan's device: the broadcast weight sync uses NCCL on gpu, gloo on cpu
    placement: str = ""  # the placement plan, described (logged as the run's rlplat.placement tag)
    # the last broadcast's gather from FSDP shards: sync/num_buckets, sync/gather_bytes, sync/peak_extra_bytes
    sync_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    sleep_level: int = 0  # rollout.sleep_level: engines sleep through each train step (rollout/sleep.py); 0: never

    @classmethod
    def start(cls, cfg: RunConfig, engine: EngineOptions, *, with_learner: bool = True) -> Workers:
        """Reserve the plan's GPUs, start the engines (and the learner and reward actor) and wait until the engines
        are up. `engine.model_path` is what they serve until the first sync. Bad placement: ConfigError.
        Engine i logs to output_dir/logs/engine_i.log; the console shows only its unexpected warnings."""
        init_ray(cfg)
        if not with_learner:  # engines only: with colocate the learner's slot costs no GPU
            cfg = dataclasses.replace(cfg, placement=dataclasses.replace(
                cfg.placement, colocate=True, reward_actor=False, weight_sync="bytes"))
        plan = plan_for_cluster(cfg)
        log.info("%s", plan.describe())
        pg = reserve(plan, cfg.placement.placement_timeout_s)  # GPUs taken but never freed: ConfigError
        workers = cls(rollout=[], call_timeout_s=cfg.cluster.call_timeout_s, weight_sync=plan.weight_sync,
                      placement_group=pg, device=plan.device, placement=plan.describe(),
                      sleep_level=cfg.rollout.sleep_level)
        try:
            tag = f"{cfg.experiment.name}-{os.getpid()}-{int(time.time())}"  # names let operators find them
            workers.rollout = [RolloutActor.options(name=f"rlplat-rollout-{tag}-{i}",
                                                    **actor_options(slot, pg, plan.engine_bundles(i)))
                               .remote(engine, str((cfg.output_dir / "logs" / f"engine_{i}.log").resolve()))
                               for i, slot in enumerate(plan.rollout)]
            if with_learner:
                workers.learners = [LearnerActor.options(**actor_options(slot, pg)).remote(
                    str(Path(cfg.model.path).resolve()), cfg.learner, cfg.algorithm, dtype=cfg.model.dtype,
                    seed=cfg.experiment.seed, lora=cfg.model.lora, rank=r) for r, slot in enumerate(plan.learner_slots)]
                workers.learner = workers.learners[0]
            joined = workers._join_learner_world(cfg) if with_learner and cfg.learner.sharded else []
            if with_learner and plan.reward is not None:
                workers.reward = RewardActor.options(**actor_options(plan.reward, pg)).remote(
                    absolute_reward_paths(cfg.reward))
            call([w.start.remote() for w in workers.rollout], "engine start", cfg.cluster.start_timeout_s,
                 "cluster.start_timeout_s")
            call(joined, "learner start (FSDP process group)", cfg.cluster.start_timeout_s, "cluster.start_timeout_s")
        except BaseException:
            workers.shutdown()
            raise
        return workers

    def call(self, refs: Any, phase: str) -> Any:
        return call(refs, phase, self.call_timeout_s)

    def _join_learner_world(self, cfg: RunConfig) -> list[Any]:
        """FSDP: rank 0 opens the rendezvous on its node's address, then every rank joins the learner group and
        builds its learner (the returned calls finish when all have)."""
        host, port = call(self.learners[0].world_address.remote(), "learner start", cfg.cluster.start_timeout_s,
                          "cluster.start_timeout_s")
        backend = "gloo" if self.device == "cpu" else "cpu:gloo,cuda:nccl" if cfg.learner.fsdp_cpu_offload else "nccl"
        return [a.join_world.remote(backend, host, port, len(self.learners), cfg.cluster.start_timeout_s)
                for a in self.learners]

    def _on_learners(self, method: str, *args: Any) -> list[Any]:
        """The same call on every learner rank (FSDP: a collective; one rank: the one learner), in rank order."""
        return [getattr(a, method).remote(*args) for a in self.learners or [self.learner]]

    def engines(self) -> list[RemoteEngine]:
        return [RemoteEngine(w, self.call_timeout_s) for w in self.rollout]

    # -------------------------------------------------------------------------------------------- rollout
    def generate(self, groups: list[Group], sampling: SamplingOptions, version: int) -> list[Group]:
        """Spread whole groups over the engines round-robin and wait for all of them (re-issued if one dies)."""
        def attempt(_: int) -> list[list[Sample]]:
            shards = [groups[i :: len(self.rollout)] for i in range(len(self.rollout))]
            return self.call([w.generate.remote([s for g in shard for s in g.samples], sampling, version)
                              for w, shard in zip(self.rollout, shards, strict=True) if shard], "generation")

        by_group: dict[int, list[Sample]] = {}
        for samples in self.retrying(version, attempt, f"re-issuing {len(groups)} groups"):
            for s in samples:
                by_group.setdefault(s.group_id, []).append(s)
        return [Group(group_id=g.group_id, prompt_id=g.prompt_id,
                      samples=sorted(by_group[g.group_id], key=lambda s: s.sample_index)) for g in groups]

    def retrying(self, version: int, attempt_fn: Callable[[int], T], on_retry: str) -> T:
        """attempt_fn(attempt), again after a rollout actor died (Ray restarts it; it gets the weights of
        `version`), at most MAX_ROLLOUT_RETRIES times. `on_retry` says what happens to the step's work."""
        for attempt in range(MAX_ROLLOUT_RETRIES):
            try:
                return attempt_fn(attempt)
            except RayActorError as e:
                log.warning("a rollout worker died mid-step (%s); %s", type(e).__name__, on_retry)
                self.recover(version)
        return attempt_fn(MAX_ROLLOUT_RETRIES)

    def recover(self, version: int) -> int:
        """Wait for restarted rollout actors and load the current weights into any engine that lost them."""
        payload, resynced = None, 0
        for w in self.rollout:
            if self._loaded_version_after_restart(w) != version:
                if payload is None:
                    payload, *others = self._on_learners("weights_bytes")  # FSDP: every rank joins the gather
                    self.call(others, "weight sync after a restart")
                self.call(w.load_weights.remote(payload, version), "weight sync after a restart")
                resynced += 1
        self.num_restarts += resynced
        if resynced:
            self.weight_group_open = False  # the restarted engine left the broadcast group: form a new one
        return resynced

    def _loaded_version_after_restart(self, worker: Any) -> int | None:
        """The weights version a rollout actor holds, waiting while Ray still restarts it (its calls fail with
        ActorUnavailableError until the new process is up), at most the deadline."""
        deadline = time.monotonic() + self.call_timeout_s
        while True:
            try:
                return self.call(worker.loaded_version.remote(), "rollout restart")
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def abort(self) -> None:
        """Stop every engine's in-flight requests (they return what they have)."""
        quick = min(QUICK_CALL_TIMEOUT_S, self.call_timeout_s)
        call([w.abort.remote() for w in self.rollout], "abort generation", quick)

    def score(self, inputs: RewardInputs) -> tuple[list[float], dict[str, float]]:
        """The reward actor's scores (placement.reward_actor), with the same RewardError as in the driver."""
        scored = self.call(self.reward.score.remote(inputs), "reward")
        if isinstance(scored, str):
            raise RewardError(scored)
        return scored

    # -------------------------------------------------------------------------------------------- learner
    def train(self, batch: TrainBatch) -> dict[str, float]:
        """One learner step. FSDP: the batch is split by tokens over the ranks (each gets its part; losses use global
        denominators) and every rank returns the same reduced metrics; rank 0's are kept, with the split's balance.
        With rollout.sleep_level the engines sleep first (sleep/freed_gib, time/sleep_s), the learners then return
        their cached GPU memory, and the engines wake in `sync`."""
        slept = self._on_engines("sleep", self.sleep_level) if self.sleep_level else {}
        if len(self.learners) <= 1:
            metrics = self.call(self.learner.train_step.remote(batch), "train step")
        else:
            parts, tokens = split_batch(batch, len(self.learners))
            metrics = self.call([a.train_step.remote(p) for a, p in zip(self.learners, parts, strict=True)],
                                "train step")[0]
            metrics["perf/learner_token_imbalance"] = max(tokens) / max(1.0, sum(tokens) / len(tokens))
        if self.sleep_level:  # the engines wake into the GPU memory the step's activations left in torch's cache
            self.call(self._on_learners("release_cached_memory"), "train step")
        return metrics | slept

    def _on_engines(self, method: str, *args: Any) -> dict[str, float]:
        """Sleep mode: `sleep` or `wake_up` on every engine, their metrics merged (rollout/sleep.py)."""
        return merge_engine_metrics(self.call([getattr(w, method).remote(*args) for w in self.rollout],
                                              f"engine {method}"))

    def sync(self, version: int) -> None:
        """Learner weights -> every engine, in place (tokens generated from then on carry `version`), by
        `placement.weight_sync`: bytes through Ray's object store, a process-group broadcast, or CUDA IPC.
        Generation may keep running meanwhile. A rollout actor that died comes back with these weights.
        Sleep mode: the engines' weights wake first (level 2: memory this sync fills), their KV cache after it."""
        woken: dict[str, float] = {}
        try:
            woken = self._on_engines("wake_up", BEFORE_SYNC) if self.sleep_level else {}
            if self.weight_sync == "broadcast":
                self._open_weight_group()
                meta = self.learner.weight_meta.remote()
                # FSDP: every rank gathers, rank 0 sends bucket by bucket; it reports the gather's sizes
                self.sync_metrics, *_ = self.call(
                    [*self._on_learners("broadcast_weights"),
                     *(w.receive_weights.remote("receive_broadcast", meta, version) for w in self.rollout)],
                    "weight sync")
            elif self.weight_sync == "ipc":
                payload = self.learner.ipc_payload.remote()
                try:
                    self.call([w.receive_weights.remote("receive_ipc", payload, version) for w in self.rollout],
                              "weight sync")
                finally:  # also when an engine died mid-sync: the learner lets go of the shared tensors
                    self.call(self.learner.release_ipc.remote(), "weight sync")
            else:
                payload, *others = self._on_learners("weights_bytes")  # FSDP: rank 0's bytes, the rest b""
                self.call([*(w.load_weights.remote(payload, version) for w in self.rollout), *others], "weight sync")
            woken |= self._on_engines("wake_up", AFTER_SYNC) if self.sleep_level else {}
        except RayActorError:
            self.recover(version)  # an engine still asleep wakes when it next generates
        if woken:  # logged with the step's metrics, as the gather's sizes are
            self.sync_metrics = self.sync_metrics | woken | {
                "time/wake_s": sum(v for k, v in woken.items() if k.startswith("time/wake_"))}

    def _open_weight_group(self) -> None:
        """Once (and again after a rollout actor restart): the learner is rank 0, engine i is rank i + 1."""
        if self.weight_group_open:
            return
        host, port = self.call(self.learner.free_address.remote(), "weight group")
        world = len(self.rollout) + 1
        backend = "nccl" if self.device == "gpu" else "gloo"
        self.call([self.learner.open_weight_group.remote(backend, host, port, world),
                   *(w.rpc.remote("open_weight_group", backend, host, port, i + 1, world)
                     for i, w in enumerate(self.rollout))], "weight group")
        self.weight_group_open = True

    def verify(self, token_ids: list[int]) -> dict[str, float]:
        """Check every engine holds the learner's weights: checksum of the tensors vLLM keeps readable, and the
        largest log-prob difference on one sequence (covers the linears that vLLM's CPU backend repacks)."""
        names = self.call(self.rollout[0].rpc.remote("readable_parameter_names"), "verify weights")
        sums, logps = (self._on_learners("engine_layout_checksum", names),
                       self._on_learners("sequence_logps", token_ids))  # FSDP: collectives, same order on each rank
        expected, learner_logps = self.call([sums[0], logps[0]], "verify weights")
        self.call(sums[1:] + logps[1:], "verify weights")
        checksums = self.call([w.rpc.remote("checksum_weights", names) for w in self.rollout], "verify weights")
        engine_logps = self.call([w.score.remote(token_ids) for w in self.rollout], "verify weights")
        diff = max(abs(a - b) for logps in engine_logps for a, b in zip(logps, learner_logps, strict=True))
        return {"sync/checksum_match": float(all(c == expected for c in checksums)), "sync/max_logp_diff": diff}

    def save_learner_state(self, out_dir: Path) -> None:
        """FSDP: every rank writes its shards (DCP) into out_dir, which must be on a file system all ranks see."""
        self.call(self._on_learners("save_state", str(out_dir.resolve())), "checkpoint save")

    def load_learner_state(self, in_dir: Path) -> None:
        self.call(self._on_learners("load_state", str(in_dir.resolve())), "checkpoint load")

    def save_model(self, out_dir: Path) -> None:
        self.call(self._on_learners("save", str(out_dir.resolve())), "save final model")

    def weight_meta(self) -> list[tuple[str, str, list[int]]]:
        """(name, dtype, shape) of every tensor a weight sync sends (`rlplat bench weight_sync` sizes it)."""
        return self.call(self.learner.weight_meta.remote(), "weight meta")

    def kill_engine(self, i: int) -> None:
        """Kill rollout actor i as a crash would; Ray restarts it and `recover` reloads it (`rlplat bench faults`)."""
        ray.kill(self.rollout[i], no_restart=False)

    # ----------------------------------------------------------------------------------------------- end
    def shutdown(self) -> None:
        """Stop the engines (a short courtesy call each, then killed anyway), the learner and the reward actor,
        and free the placement group. Safe to call twice and with actors that are dead or hung."""
        for w in self.rollout:
            try:
                call(w.shutdown.remote(), "engine shutdown", min(QUICK_CALL_TIMEOUT_S, self.call_timeout_s))
            except Exception:  # best effort: the actor may be gone or stopped
                pass
            ray.kill(w)
        for actor in (*(self.learners or [self.learner]), self.reward):
            if actor is not None:
                ray.kill(actor)
        self.rollout, self.learner, self.learners, self.reward = [], None, [], None
        release(self.placement_group)
        self.placement_group = None

