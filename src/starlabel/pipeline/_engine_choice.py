"""Engines chosen by name: the one place the CLI's ``--engine`` strings become objects.

Kept apart from ``_engine.py`` because it names every engine, including the Ray engine,
which itself builds on the interface defined there.
"""

from __future__ import annotations

from ._engine import AbstractEngine, LocalEngine

__all__ = ["resolve_engine", "ENGINE_NAMES"]

ENGINE_NAMES = ("local", "ray")


def resolve_engine(
    engine: str | AbstractEngine,
    *,
    address: str | None = None,
    num_workers: int | None = None,
) -> AbstractEngine:
    """Turn an engine name (and its CLI options) into an engine object.

    Parameters
    ----------
    engine : {"local", "ray"} or AbstractEngine
        An engine object is returned unchanged (then ``address`` and
        ``num_workers`` must be None).
    address : str, optional
        Ray cluster address (``"auto"``, ``"ray://host:10001"``); Ray only.
    num_workers : int, optional
        Ray actors to start (default: one per CPU of the cluster); Ray only.

    Raises
    ------
    ValueError
        For an unknown name or options that the engine does not take.
    """
    if isinstance(engine, AbstractEngine):
        if address is not None or num_workers is not None:
            raise ValueError(
                "`address`/`num_workers` configure engine='ray'; with an engine object set"
                " them on the object instead."
            )
        return engine
    if engine == "local":
        if address is not None or num_workers is not None:
            raise ValueError(
                "`address` and `num_workers` only apply to engine='ray' (CLI: --engine ray);"
                " the local engine uses this process and all its cores."
            )
        return LocalEngine()
    if engine == "ray":
        # Imported here: Ray is an optional extra, and importing it costs seconds.
        from ._engine_ray import RayEngine

        return RayEngine(address=address, num_workers=num_workers)
    raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINE_NAMES)}.")
