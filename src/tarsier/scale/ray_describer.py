"""The Ray engine: the same ``run(requests) -> results`` as :class:`~tarsier.engine.describer.Describer`, on Ray Data.

``tarsier caption --engine ray`` and ``tarsier bench run --engine ray`` swap their describer for this
one and keep everything else (inputs, keys, resume, output writing) as it is in process.

The pipeline is Ray Data's streaming executor: requests -> decode and preprocess in CPU tasks
(:func:`tarsier.engine.describer.prepare_request`, frames sampled exactly as in process; a media error
becomes an error row) -> model actors, one loaded model each, generating in the project's length-
grouped batches (:meth:`Describer.describe_prepared`) -> results streamed back to the driver, which
writes them as they come. Ray applies backpressure between the stages, so decoded pixels never
pile up ahead of the models. Without an address, Ray starts on this machine; ``auto`` or
``ray://host:10001`` joins a cluster.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from tarsier.engine.describer import GROUPING_WINDOW, DescribeRequest, DescribeResult
from tarsier.engine.settings import GenerationSettings
from tarsier.errors import MediaError, TarsierError
from tarsier.scale.local_ray import LocalRayRun, RaySettings, require_ray


@functools.lru_cache(maxsize=4)
def _processor(folder: str, max_n_frames: int | None) -> Any:
    """One processor per Ray worker process (and checkpoint), loaded on first use."""
    from tarsier.models import auto

    return auto.load_processor(folder, max_n_frames=max_n_frames)


def _decode_row(row: dict[str, Any], folder: str, max_n_frames: int | None) -> dict[str, Any]:
    """A Ray task: fetch, sample and preprocess one request; a media error becomes the row's error."""
    from tarsier.engine.describer import PreparedRequest, prepare_request

    media = json.loads(row["media"])
    request = DescribeRequest(key=row["key"], media=media, prompt=_optional(row["prompt"]),
                              start_time=_optional(row["start_time"]), end_time=_optional(row["end_time"]))
    try:
        with _local_copy(media) as local:
            prepared = prepare_request(_processor(folder, max_n_frames), replace(request, media=local))
        if prepared.error and local != media:  # name the media as the user gave it, not the copy
            prepared.error = prepared.error.replace(str(local), str(media))
    except MediaError as exc:
        prepared = PreparedRequest(request=request, error=str(exc))
    return {**row, **_prepared_columns(prepared)}


@contextmanager
def _local_copy(media: Any) -> Iterator[Any]:
    """A media URI (s3://, gs://, hdfs://, ...) copied to a temporary local file; local paths as they are."""
    if not isinstance(media, str) or "://" not in media:
        yield media
        return
    import tempfile

    from pyarrow import fs

    handle, path = tempfile.mkstemp(prefix="tarsier-", suffix=os.path.splitext(media)[1])
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                filesystem, remote = fs.FileSystem.from_uri(media)
                with filesystem.open_input_stream(remote) as stream:
                    while chunk := stream.read(1 << 20):
                        out.write(chunk)
            except Exception as exc:
                raise MediaError(f"{media}: cannot fetch ({' '.join(str(exc).split())})") from None
        yield path
    finally:
        os.unlink(path)


@dataclass(frozen=True)
class _ReplicaConfig:
    folder: str
    device: str | None
    dtype: str | None
    max_n_frames: int | None
    batch_size: int
    generation: GenerationSettings
    threads: int  # torch threads of a CPU replica; 0 leaves torch's default
    compile: bool = False  # the decode step (engine.compile_decode_step)


class _Captioner:
    """A Ray actor holding one loaded model; generates for batches of prepared rows.

    Its settings are a class attribute (see :func:`_captioner_for`): no constructor arguments.
    """

    config: _ReplicaConfig

    def __init__(self) -> None:
        import torch

        from tarsier.engine.describer import Describer
        from tarsier.engine.loading import load_pretrained

        config = self.config
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        model, processor = load_pretrained(config.folder, device=config.device, dtype=config.dtype,
                                           max_n_frames=config.max_n_frames, progress=False, compile=config.compile)
        self.describer = Describer(model, processor, config.generation, batch_size=config.batch_size, num_workers=0)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = _rows(batch)
        results = self.describer.describe_prepared([_prepared_from(row) for row in rows])
        return {
            "key": [result.key for result in results],
            "text": [result.text for result in results],
            "error": [result.error for result in results],
            "prompt": [result.prompt for result in results],
            "frame_indices": [json.dumps(result.frame_indices) for result in results],
            "total_frames": [result.total_frames for result in results],
            "decode_seconds": [result.decode_seconds for result in results],
            "generate_seconds": [result.generate_seconds for result in results],
        }


def _captioner_for(config: _ReplicaConfig) -> type[_Captioner]:
    return type("Captioner", (_Captioner,), {"config": config})


class RayDescriber:
    """Runs describe requests through Ray Data; results come back as they finish (any order)."""

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None, max_n_frames: int | None = None,
                 batch_size: int = 4, generation: GenerationSettings | None = None,
                 settings: RaySettings | None = None, compile: bool = False):
        from tarsier.checkpoints import checkpoint_folder

        self.folder = str(checkpoint_folder(model))  # a hub id is downloaded once, on the driver
        self.device, self.dtype, self.max_n_frames = device, dtype, max_n_frames
        self.batch_size = batch_size
        self.generation = generation or GenerationSettings()
        self.settings = settings or RaySettings()
        self.compile = compile

    def run(self, requests: Iterable[DescribeRequest]) -> Iterator[DescribeResult]:
        ray = require_ray()
        rows = [_request_row(request) for request in requests]
        if not rows:
            return
        started_here, local = self._start(ray)
        try:
            self._check_resources(ray)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the command's own bar counts items, errors and rate
            settings = self.settings
            dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * settings.decode_workers)))
            dataset = dataset.map(_decode_row, fn_kwargs={"folder": self.folder, "max_n_frames": self.max_n_frames},
                                  compute=ray.data.TaskPoolStrategy(size=settings.decode_workers), num_cpus=1)
            replica = _ReplicaConfig(self.folder, self.device, self.dtype, self.max_n_frames, self.batch_size,
                                     self.generation, 0 if settings.gpus_per_replica else max(1, round(settings.cpus_per_replica)),
                                     self.compile)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                dataset = dataset.map_batches(
                    _captioner_for(replica),
                    batch_size=self.batch_size * GROUPING_WINDOW,
                    compute=ray.data.ActorPoolStrategy(size=settings.replicas),
                    num_gpus=settings.gpus_per_replica or None,
                    num_cpus=settings.cpus_per_replica,
                    batch_format="numpy",
                    # A replica that dies stops the run (rerunning resumes): Ray cannot promise to restart Ray
                    # Data actors, whose constructor state lives in its object store, and logs an error line
                    # about it unless restarts are off. (Passing it as a remote argument is what Ray documents,
                    # though it flags remote arguments as deprecated.)
                    max_restarts=0,
                )
            for row in dataset.iter_rows():
                if local is not None:
                    local.note(every=2.0)  # actors and tasks start as the run goes
                yield DescribeResult(
                    key=str(row["key"]), text=_optional(row["text"]), error=_optional(row["error"]),
                    prompt=_optional(row["prompt"]), frame_indices=json.loads(row["frame_indices"]),
                    total_frames=None if _optional(row["total_frames"]) is None else int(row["total_frames"]),
                    decode_seconds=float(row["decode_seconds"]), generate_seconds=float(row["generate_seconds"]),
                )
        finally:
            if local is not None:
                local.note()
            if started_here:
                ray.shutdown()
            if local is not None:
                local.stop()  # what ray.shutdown() left running

    def _check_resources(self, ray: Any) -> None:
        problem = _fits(ray, self.settings)
        if problem:
            raise TarsierError(problem)

    def _start(self, ray: Any) -> tuple[bool, LocalRayRun | None]:
        """Connect to (or start) Ray: whether this call did (and should disconnect), and the record of
        the local Ray it started (whose processes it stops), if any."""
        if ray.is_initialized():
            return False, None
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.settings.address:
            kwargs["address"] = self.settings.address
        else:
            # On one machine Ray's CPUs are scheduling slots: give every stage its slot (oversubscribing a
            # small machine a little) rather than leave an actor waiting forever for a free CPU.
            wanted = self.settings.replicas * self.settings.cpus_per_replica + self.settings.decode_workers
            kwargs["num_cpus"] = self.settings.num_cpus or max(os.cpu_count() or 1, int(wanted + 0.999))
        # workers import tarsier from the same environment; keep their logs quiet like ours
        kwargs["runtime_env"] = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}}
        local = None if self.settings.address else LocalRayRun()
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if local is not None:
                local.stop()
            where = self.settings.address or "a local Ray instance"
            raise TarsierError(f"could not start or reach {where}: {' '.join(str(exc).split())}") from None
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plans and notices would break the progress bar
        if local is not None:
            local.note()
        return True, local


def _fits(ray: Any, settings: RaySettings) -> str | None:
    """Why the cluster cannot place the actors asked for (Ray would wait for them forever), or None."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if settings.replicas * settings.gpus_per_replica > gpus:
        return (f"{settings.replicas} replicas x {settings.gpus_per_replica:g} GPUs need "
                f"{settings.replicas * settings.gpus_per_replica:g} GPUs but Ray has {gpus:g}; "
                "lower --replicas or --gpus-per-replica (0 runs on CPU)")
    needed = settings.replicas * settings.cpus_per_replica + settings.decode_workers
    if needed > cpus:
        return (f"{settings.replicas} replicas and {settings.decode_workers} decode workers need {needed:g} CPUs "
                f"but Ray has {cpus:g}; lower --replicas or --decode-workers")
    return None


def _request_row(request: DescribeRequest) -> dict[str, Any]:
    media = request.media if isinstance(request.media, str) else [os.fspath(m) for m in request.media]
    return {"key": request.key, "media": json.dumps(media), "prompt": request.prompt,
            "start_time": request.start_time, "end_time": request.end_time}


def _prepared_columns(prepared: Any) -> dict[str, Any]:
    """A prepared request as plain columns (media inputs as .npz bytes: Arrow-friendly whatever the frame count)."""
    pixels = b""
    if prepared.media_inputs and prepared.error is None:
        buffer = io.BytesIO()
        import numpy as np

        np.savez(buffer, **{name: value.numpy() for name, value in prepared.media_inputs.items()})
        pixels = buffer.getvalue()
    return {"ids": json.dumps(prepared.ids), "pixels": pixels, "resolved_prompt": prepared.prompt,
            "frame_indices": json.dumps(prepared.frame_indices), "total_frames": prepared.total_frames,
            "decode_seconds": prepared.decode_seconds, "prepare_error": prepared.error}


def _prepared_from(row: dict[str, Any]) -> Any:
    import numpy as np
    import torch

    from tarsier.engine.describer import PreparedRequest

    request = DescribeRequest(key=str(row["key"]), media=json.loads(row["media"]))
    media_inputs = {}
    if row["pixels"]:
        with np.load(io.BytesIO(row["pixels"])) as stored:
            media_inputs = {name: torch.from_numpy(stored[name]) for name in stored.files}
    return PreparedRequest(
        request=request, prompt=_optional(row["resolved_prompt"]), ids=json.loads(row["ids"]),
        media_inputs=media_inputs,
        frame_indices=json.loads(row["frame_indices"]),
        total_frames=None if _optional(row["total_frames"]) is None else int(row["total_frames"]),
        decode_seconds=float(row["decode_seconds"]), error=_optional(row["prepare_error"]),
    )


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[name] for name in names))]


def _optional(value: Any) -> Any:
    """Arrow/numpy give None, NaN or numpy scalars for missing values: plain Python, None when missing."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):
        value = value.item()
        if isinstance(value, float) and value != value:
            return None
    if isinstance(value, bytes):
        return value.decode()
    return value
