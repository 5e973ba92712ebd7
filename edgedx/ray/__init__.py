"""Classify an archive on Ray (extra ``edgedx[ray]``): one Classifier per actor, records as from one machine.

    from edgedx.ray import RayOptions, classify
    for result in classify(paths, {"model": "model.onnx"}, RayOptions(workers=4)):
        ...

The pipeline is Ray Data's batch inference: the inputs become a dataset, ``map_batches`` runs
:class:`Predictor` (a stateful :class:`edgedx.api.Classifier`) on a pool of ``workers`` actors with
``num_cpus``/``num_gpus`` each, and the driver iterates the results in input order (streaming, with
backpressure) and writes them itself, so the output is one file in any ``edgedx classify`` format.
Every record is the same as ``edgedx classify`` gives for the same input, error records included.

Inputs:
  * local paths (files or folders, walked as ``edgedx classify`` walks them): the dataset holds the
    paths and each actor reads its files itself. There is no read stage, so nothing competes with
    the actors for CPUs.
  * URIs that Ray's readers take (``s3://``, ``gs://``, ``abfs://``, ...): ``read_binary_files``
    reads them; the record's ``path`` is the path Ray reports. The read tasks ask for half a CPU and,
    unless ``num_cpus`` is given, the actors share what is left (at most one CPU each): on a small
    node, a read stage followed by actors of one CPU each can wait forever for a free CPU.
  * a Ray Dataset with a ``bytes`` column (and optionally ``path``), read however the caller likes.

A crashed actor is restarted and its batch retried by Ray; the driver sees each batch's output once,
so no record is lost or duplicated. Ray and pyarrow are imported only by this module.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedx.errors import UsageError
from edgedx.inputs import BytesSource, path_key, walk

if TYPE_CHECKING:
    import numpy as np

    from edgedx.results import Result

log = logging.getLogger("edgedx")

#: CPUs asked for by each read task of a URI read stage.
READ_CPUS = 0.5


@dataclass(frozen=True)
class RayOptions:
    """Args:
    address: the Ray cluster to join (``auto``, ``ray://host:10001``, ...); None starts a local
        one, or joins the one ``RAY_ADDRESS`` names or this process already started.
    workers: actors, each holding one Classifier.
    num_cpus: CPUs per actor (fractions allowed); default 1, less when a read stage needs CPUs.
    num_gpus: GPUs per actor (fractions allowed).
    batch_size: inputs per ``map_batches`` call.
    """

    address: str | None = None
    workers: int = 1
    num_cpus: float | None = None
    num_gpus: float = 0.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1:
            raise UsageError("Ray workers and batch size must be >= 1")
        if (self.num_cpus is not None and self.num_cpus <= 0) or self.num_gpus < 0:
            raise UsageError("Ray CPUs per worker must be > 0 and GPUs per worker >= 0")


class Predictor:
    """The work of one actor: a Classifier, batches of paths or bytes in, JSON records out.

    ``settings`` holds the keyword arguments of :class:`edgedx.api.Classifier` (picklable);
    :func:`classify` sets it on a subclass per run.
    """

    settings: dict[str, Any] = {}

    def __init__(self) -> None:
        from edgedx.api import Classifier

        self.clf = Classifier(**self.settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        if "bytes" in batch:
            names = batch["path"] if "path" in batch else [None] * len(batch["bytes"])
            sources: list[Any] = [BytesSource(bytes(d), None if n is None else str(n)) for d, n in zip(batch["bytes"], names)]
        else:
            sources = [Path(p) for p in batch["path"]]
        return {"record": [json.dumps(r.to_dict()) for r in self.clf.classify_many(sources)]}


def classify(
    sources: Iterable[str | Path] | Any,
    classifier: dict[str, Any],
    options: RayOptions = RayOptions(),
    *,
    predictor: type = Predictor,
) -> Iterator[Result]:
    """Yield one :class:`edgedx.api.Result` per input (per frame), in input order.

    Args:
        sources: local paths or folders, URIs, or a Ray Dataset with a ``bytes`` or ``path`` column.
        classifier: :class:`edgedx.api.Classifier` keyword arguments for every actor; give the same
            ``model`` path the records should name.
        options: cluster address, actors and their resources.
        predictor: the actor class (a subclass of :class:`Predictor`, to add work per batch).
    """
    from edgedx.results import Result

    ray = _ray()
    started = _connect(ray, options.address)
    try:
        ds, reads = _dataset(ray, sources)
        if ds is None:
            return
        # The settings ride in the class itself, not as constructor arguments in the object store:
        # a restarted actor must find them even after the driver's references are gone.
        actor = type(predictor.__name__, (predictor,), {"settings": dict(classifier)})
        ds = ds.map_batches(
            actor,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=_actor_cpus(ray, options, reads),
            num_gpus=options.num_gpus or None,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["record"]:
                yield Result(**json.loads(text))
    finally:
        if started:
            ray.shutdown()


def actor_settings(options: RayOptions, session_options: Any, workers: int | None) -> dict[str, Any]:
    """Classifier settings for actors: decode and inference threads sized to the actor's CPUs.

    A Classifier's defaults take every core of its node, once per actor; these take ``num_cpus``.
    Threads the user chose are kept.
    """
    import dataclasses

    cores = max(1, round(options.num_cpus or 1.0))
    return {"workers": cores if workers is None else workers,
            "session_options": dataclasses.replace(session_options, threads=session_options.threads or cores)}


def _ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--ray needs Ray Data: pip install 'edgedx[ray]'") from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # records in input order, as edgedx classify writes them
    ctx.enable_progress_bars = False  # edgedx reports progress itself
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join or start a cluster; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    try:
        # Errors only: Ray's notices (auth tokens, deprecations) are not the user's business here.
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, configure_logging=True)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return True


def _dataset(ray: Any, sources: Any) -> tuple[Any, bool]:
    """(dataset of paths or bytes, whether it has a read stage); (None, False) when empty."""
    if isinstance(sources, ray.data.Dataset):
        return sources, True
    if isinstance(sources, (str, Path)):
        sources = [sources]
    items = [str(s) for s in sources]
    uris = [s for s in items if "://" in s]
    if uris and len(uris) != len(items):
        raise UsageError("give local paths or URIs to --ray, not both")
    if uris:
        return ray.data.read_binary_files(uris, include_paths=True, num_cpus=READ_CPUS), True
    rows = [{"path": path_key(p)} for p in walk(items)]
    if not rows:
        return None, False
    return ray.data.from_items(rows), False


def _actor_cpus(ray: Any, options: RayOptions, reads: bool) -> float:
    """CPUs per actor: as asked; 1 without a read stage; else a share that leaves room for reads."""
    if options.num_cpus is not None:
        return options.num_cpus
    if not reads:
        return 1.0
    total = float(ray.cluster_resources().get("CPU", 1.0))
    share = (total - READ_CPUS) / options.workers
    if share < 0.05:
        raise UsageError(f"{options.workers} Ray workers and a read stage do not fit in {total:g} CPUs; give fewer workers or --ray-cpus")
    return min(1.0, share)
