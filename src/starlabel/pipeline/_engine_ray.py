"""The Ray engine: chunks run on a pool of Ray actors that each load the model once.

Ray is imported only when this engine runs, so the default local engine never needs
it (install with ``pip install 'starlabel[ray]'``).

Design (see ``docs/scaling.md``): each actor builds a :class:`ChunkProcessor` in its
constructor — loading the model once and compiling the test step on its first
chunk — and then reads and infers the chunks the driver hands it. Only chunk
descriptions (files and row ranges) travel to the actors and only results travel back,
so the spectra never pass through the driver or the object store; the input files
must therefore be readable by every worker (a shared file system on a cluster). The
driver keeps at most ``tasks_per_worker`` chunks queued per actor, which bounds
memory everywhere and keeps every actor busy. We use actors and tasks rather than
Ray Data's ``map_batches`` because the chunk plan must stay intact for exactly-once
resume (Ray Data re-blocks batches), and Ray Data actor pools that claim every CPU
can starve their own read tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import MissingExtraError
from ._chunks import ChunkSpec
from ._engine import AbstractEngine, WorkerSpec
from ._worker import ChunkOutcome

__all__ = ["RayEngine"]


class _ChunkActor:
    """Body of a Ray actor: one model, many chunks.

    The actor runs with ``max_concurrency = tasks_per_worker`` threads, so the next
    queued chunk is read while the current one is inferred (the local engine's
    prefetch). Inference itself is serialised by a lock: one compiled test step at a
    time per process, as in the local engine (XLA's CPU client is not meant to run
    the same executable from several Python threads at once).
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self._processor = spec.build()
        self._infer_lock = threading.Lock()

    def ready(self) -> bool:
        return True

    def process(self, chunk: ChunkSpec) -> ChunkOutcome:
        return self._processor(chunk, infer_lock=self._infer_lock)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise MissingExtraError(
            "engine='ray' needs Ray: pip install 'starlabel[ray]' (or pip install 'ray[data]');"
            " or use the default local engine."
        ) from error
    return ray


@dataclass(frozen=True)
class RayEngine(AbstractEngine):
    """Run chunks on Ray actors, on this machine or on a Ray cluster.

    Parameters
    ----------
    address : str, optional
        Cluster to join: ``"auto"`` (a cluster started with ``ray start`` on this
        node), ``"ray://head:10001"`` (Ray Client) or ``"head:6379"``. Default: if Ray
        is already initialised in this process use it, else start a local Ray
        instance for the duration of the run.
    num_workers : int, optional
        Number of actors. Default: as many as fit, ``cluster CPUs // cpus_per_worker``
        (or ``cluster GPUs // gpus_per_worker`` when GPUs are requested).
    cpus_per_worker : float
        CPUs each actor reserves. Fractions are allowed; leave room for other work.
    gpus_per_worker : float
        GPUs each actor reserves (e.g. 1.0 on GPU nodes; JAX in the actor then uses
        the GPU Ray assigns to it).
    worker_env : mapping of str to str
        Environment variables for the actors, e.g. ``{"PYTHONPATH": ...}`` so that
        plug-in model classes import, or ``{"XLA_FLAGS": ...}``.
    tasks_per_worker : int
        Chunks queued per actor (≥ 1); 2 keeps an actor busy while the driver
        collects the previous result, and lets it read one chunk while it infers
        another (memory: this many chunks per actor).
    startup_timeout_s : float
        Seconds to wait for all actors to load the model before failing with an
        error (instead of waiting forever for resources the cluster lacks).
    """

    address: str | None = None
    num_workers: int | None = None
    cpus_per_worker: float | int = 1.0
    gpus_per_worker: float | int = 0.0
    worker_env: Mapping[str, str] = field(default_factory=dict)
    tasks_per_worker: int = 2
    startup_timeout_s: float | int = 300.0

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"`num_workers` must be ≥ 1, got {self.num_workers}.")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ValueError("`cpus_per_worker` and `gpus_per_worker` must be ≥ 0.")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ValueError("give each worker some CPUs or GPUs (cpus_per_worker or gpus_per_worker > 0).")
        if self.tasks_per_worker < 1:
            raise ValueError(f"`tasks_per_worker` must be ≥ 1, got {self.tasks_per_worker}.")

    def describe(self) -> dict[str, Any]:
        """JSON-able description."""
        return {
            "name": "ray",
            "address": self.address,
            "num_workers": self.num_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
        }

    def _worker_count(self, resources: Mapping[str, float]) -> int:
        limits = []
        if self.cpus_per_worker > 0:
            limits.append(int(resources.get("CPU", 0.0) / self.cpus_per_worker + 1e-9))
        if self.gpus_per_worker > 0:
            limits.append(int(resources.get("GPU", 0.0) / self.gpus_per_worker + 1e-9))
        fits = min(limits)
        if self.num_workers is None:
            if fits < 1:
                raise ValueError(
                    f"the Ray cluster ({dict(resources)}) cannot fit one worker needing"
                    f" {self.cpus_per_worker} CPU and {self.gpus_per_worker} GPU; lower"
                    " cpus_per_worker/gpus_per_worker or add nodes."
                )
            return fits
        if self.num_workers > fits:
            raise ValueError(
                f"num_workers={self.num_workers} does not fit the Ray cluster: it has"
                f" {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} GPUs, room for"
                f" {fits} workers at {self.cpus_per_worker} CPU / {self.gpus_per_worker} GPU"
                " each; lower --num-workers or cpus_per_worker."
            )
        return self.num_workers

    def run(self, spec: WorkerSpec, chunks: Sequence[ChunkSpec]) -> Iterator[ChunkOutcome]:
        """Yield outcomes as actors finish them."""
        if not chunks:
            return
        ray = _import_ray()
        started_here = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            started_here = True
        actors: list[Any] = []
        try:
            n_workers = self._worker_count(ray.cluster_resources())
            remote_cls = ray.remote(_ChunkActor).options(
                max_concurrency=self.tasks_per_worker,
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker,
                runtime_env={"env_vars": dict(self.worker_env)} if self.worker_env else None,
            )

            def start_actor() -> Any:
                return remote_cls.remote(spec)

            actors = [start_actor() for _ in range(n_workers)]
            try:
                ray.get([actor.ready.remote() for actor in actors], timeout=self.startup_timeout_s)
            except ray.exceptions.GetTimeoutError as error:
                raise TimeoutError(
                    f"{n_workers} Ray workers did not start within {self.startup_timeout_s:.0f} s;"
                    " the cluster may lack the requested CPUs/GPUs or cannot import starlabel."
                ) from error
            yield from self._schedule(ray, actors, start_actor, chunks)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def _schedule(
        self, ray: Any, actors: list[Any], start_actor: Any, chunks: Sequence[ChunkSpec]
    ) -> Iterator[ChunkOutcome]:
        todo = list(reversed(chunks))
        load = [0] * len(actors)
        # Each request remembers its actor: a dead actor's queued requests still come
        # back (as errors) after a new actor has taken its slot.
        in_flight: dict[Any, tuple[int, ChunkSpec, Any]] = {}

        def fill() -> None:
            for slot, actor in enumerate(actors):
                while todo and load[slot] < self.tasks_per_worker:
                    chunk = todo.pop()
                    in_flight[actor.process.remote(chunk)] = (slot, chunk, actor)
                    load[slot] += 1

        fill()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            slot, chunk, actor = in_flight.pop(ref)
            current = actors[slot] is actor
            if current:
                load[slot] -= 1
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                # The worker process died (e.g. out of memory): report the chunk (a
                # restart retries it); the chunks queued behind it fail the same way.
                # Replace the worker at once, so that no new chunk goes to the dead one.
                outcome = ChunkOutcome(chunk, None, f"worker died: {type(error).__name__}")
                if current:
                    actors[slot] = start_actor()
                    load[slot] = 0
            yield outcome
            fill()
