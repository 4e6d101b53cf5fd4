"""TransferQueueDeployment: the one place TransferQueue's actors (its controller and storage units) are started.

TransferQueue 0.1.11 holds the experience store's rows (rlplat/data/store.py). Its controller and each storage unit
are Ray actors that ask for num_cpus=1 each: start Ray with enough logical CPUs (`ray.init(num_cpus=...)`) first.
This module imports no Ray itself (TransferQueue's actor classes bring their own `.remote`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from transfer_queue.client import TransferQueueClient
from transfer_queue.controller import TransferQueueController
from transfer_queue.sampler import SequentialSampler
from transfer_queue.storage.simple_storage import SimpleStorageUnit

logger = logging.getLogger(__name__)


class TransferQueueDeployment:
    """One TransferQueue instance: a controller and SimpleStorage unit actors, plus a client in this process.

    Started directly rather than through `transfer_queue.init()`, whose process-global singleton and fixed
    actor names ("TransferQueueController", "TransferQueueStorageUnit#i") allow only one TQ per Ray job.
    Several stores can share one deployment (each uses its own partition); a store that is not given one
    starts and owns its own. Needs an initialised Ray with 1 + num_storage_units free logical CPUs.
    """

    def __init__(self, *, num_storage_units: int = 2, start_timeout_s: float = 120.0) -> None:
        if num_storage_units < 1:
            raise ValueError(f"num_storage_units must be >= 1, got {num_storage_units}")
        self.controller: Any = TransferQueueController.remote(sampler=SequentialSampler(), polling_mode=True)
        unit_config = {"total_storage_size": None, "num_data_storage_units": num_storage_units}
        self.units: list[Any] = [SimpleStorageUnit.remote(config=unit_config) for _ in range(num_storage_units)]
        self.client: TransferQueueClient | None = None
        try:
            controller_info = _wait(self.controller.get_zmq_server_info.remote(), start_timeout_s)
            unit_infos = {f"unit{i}": _wait(u.get_zmq_server_info.remote(), start_timeout_s)
                          for i, u in enumerate(self.units)}
        except TimeoutError:
            # Unscheduled actors cannot run a terminate call; dropping the last handles makes Ray kill them.
            self.controller, self.units = None, []
            raise TimeoutError(
                f"TransferQueue actors did not start within {start_timeout_s:.0f} s. They ask Ray for num_cpus=1 "
                f"each ({1 + num_storage_units} in all): call ray.init(num_cpus=...) with enough logical CPUs "
                "before creating the store") from None
        self.client = TransferQueueClient(client_id=f"rlplat_store_{uuid.uuid4().hex[:8]}",
                                          controller_info=controller_info)
        self.client.initialize_storage_manager(manager_type="SimpleStorage", config={"zmq_info": unit_infos})

    def __enter__(self) -> TransferQueueDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop the client, then the storage units (gracefully, as TQ's own close() does), then the actors.

        Idempotent. Stores still using this deployment fail with StoreClosedError afterwards.
        """
        if self.client is not None:
            self.client.close()
            self.client = None
        for unit in self.units:
            try:
                _wait(unit.shutdown.remote(), timeout_s)
            except Exception as e:  # a dead unit has nothing left to stop
                logger.warning("TransferQueue storage unit did not shut down cleanly: %s", e)
        # Wait for the actors to exit so that their CPUs are back in Ray's pool when close() returns.
        actors = [*self.units, *([self.controller] if self.controller is not None else [])]
        ends = [a.__ray_terminate__.remote() for a in actors]
        for ref in ends:
            try:
                _wait(ref, timeout_s)
            except Exception:  # expected: the call ends with the actor's death
                pass
        self.controller, self.units = None, []


def _wait(ref: Any, timeout_s: float) -> Any:
    """ray.get(ref, timeout=...) without importing ray: ObjectRef.future() is a concurrent.futures.Future,
    whose TimeoutError is the builtin one on Python >= 3.11."""
    return ref.future().result(timeout=timeout_s)
