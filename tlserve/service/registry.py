"""The model registry: which versions are served, following the repository, atomic swap and drain.

Every ``poll_interval_s`` the repository (a directory, or a bucket: ``sources.py``) is scanned. For
each model the version policy picks versions among those visible that have not failed; new ones are
fetched (a bucket's into a local cache), loaded and warmed up in a worker thread while the current
ones keep serving, then the set of serving versions is replaced in one assignment. A version that
leaves the set is drained — it finishes every request already holding it — then unloaded. A version
that fails to load (a file not matching the manifest's sha256 included) is logged, reported
(ListModels, GetModelStatus) and left out of the policy, so the previous version keeps serving; it
is retried once any of its files changes (say, a copy that was still in progress when it was first
seen). A bucket that cannot be listed, or a version that cannot be downloaded, changes nothing:
what is loaded keeps serving and the next scan tries again. The directories name a version (as in
TF Serving): a version copied under another number or model name is served, and where its manifest
says it was exported is logged with the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tlserve import repository as repo
from tlserve.service.backends import Backend
from tlserve.service.backends.base import Outputs
from tlserve.service.batching import Batcher
from tlserve.service.domain import State
from tlserve.service.errors import InvalidArgument, NotFound, Unavailable
from tlserve.service.loader import load_version
from tlserve.service.metrics import Metrics, VersionMetrics
from tlserve.service.monitor import Reference, load_reference
from tlserve.service.settings import ModelSettings, ServerSettings, VersionPolicy
from tlserve.service.sources import open_source
from tlserve.storage import Stamp, StorageError

log = logging.getLogger(__name__)
MAX_FETCH_BACKOFF_S = 300.0
"""Longest wait before a version whose download keeps failing is tried again (unchanged)."""


@dataclass(eq=False)
class LoadedVersion:
    """A version that loaded and warmed up: what requests run on, held by ``ModelRegistry.lease``."""

    name: str
    version: int
    manifest: repo.Manifest
    backend: Backend
    batcher: Batcher[Outputs]
    metrics: VersionMetrics
    path: Path
    """Where its files are (in a bucket's cache: released once it is unloaded)."""
    reference: Reference | None = None
    """Its reference statistics (novelty), None for a version exported without them."""
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no request holds it (a retired version is unloaded once it is)."""

    def __post_init__(self) -> None:
        self.idle.set()

    def hold(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()


@dataclass(eq=False)
class VersionRecord:
    """What this server knows of one version directory, in any state."""

    version: int
    stamp: tuple[int, int, int]
    """(files, bytes, newest mtime in ns) of the version dir when it was loaded or failed."""
    state: State = State.LOADING
    error: str = ""
    manifest: repo.Manifest | None = None
    """Once it has loaded (kept after it is unloaded: what it was)."""
    loaded: LoadedVersion | None = None
    """While AVAILABLE and UNLOADING."""

    @property
    def ready(self) -> bool:
        return self.state is State.AVAILABLE


@dataclass(eq=False)
class Model:
    name: str
    settings: ModelSettings
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    """Every version this server has seen, in any state."""
    serving: dict[int, LoadedVersion] = field(default_factory=dict)
    """The versions that answer requests; replaced as a whole, never mutated."""


def labelled(model: Model, label: str) -> int:
    """The version number a label of the model's settings names; NotFound for an unknown label."""
    number = model.settings.version_labels.get(label)
    if number is None:
        known = ", ".join(sorted(model.settings.version_labels)) or "none configured"
        raise NotFound(f"model {model.name!r} has no version label {label!r} (labels: {known})")
    return number


class ModelRegistry:
    """The served models, following the model repository; ``lease()`` is how the core gets a
    version to run."""

    def __init__(
        self,
        settings: ServerSettings,
        compute: Executor,
        metrics: Metrics | None = None,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.source = open_source(settings.location, settings.repository_cache_dir)
        self._compute = compute
        self._on_change = on_change
        self.metrics = metrics or Metrics()
        self.models: dict[str, Model] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.scanned = False
        """True once the first scan is done (the server's readiness needs it)."""
        self._misplaced_said = False
        self._outage = ""
        """The store's error while a bucket cannot be listed (what is loaded keeps serving)."""
        self._unfetched: dict[tuple[str, int], tuple[Stamp, int, float]] = {}
        """Versions whose download failed: (their stamp then, failures, monotonic time of the next try)."""
        self._stopping = False
        """Set by ``interrupt`` or ``close``: no more loads; a download in progress is abandoned."""

    # --- lookup -----------------------------------------------------------------------------------
    @contextmanager
    def lease(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[LoadedVersion]:
        """The serving version asked for (newest when neither ``version`` nor ``label``), held
        for the duration of the ``with`` block so that it is not unloaded under the request."""
        served = self.resolve(name, version, label)
        served.hold()
        try:
            yield served
        finally:
            served.release()

    def model(self, name: str) -> Model:
        if not name:
            raise InvalidArgument("no model name given")
        if len(name) > 128:
            raise InvalidArgument(f"model name of {len(name)} characters is too long (at most 128)")
        try:
            repo.check_model_name(name)  # NOTE: names never reach the file system; refuse them anyway
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"model {name!r} not found (models: {known})")
        return model

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        model = self.model(name)
        if label:
            version = labelled(model, label)
        serving = model.serving
        if version is None:
            if not serving:
                raise Unavailable(f"model {name!r} has no version ready ({self._states(model)})")
            return serving[max(serving)]
        served = serving.get(version)
        if served is None:
            available = ", ".join(map(str, sorted(serving))) or "none"
            raise NotFound(f"model {name!r} version {version} is not served (serving: {available})")
        return served

    @staticmethod
    def _states(model: Model) -> str:
        return (
            ", ".join(f"v{v.version} {v.state.value.lower()}" for v in model.versions.values())
            or "no versions"
        )

    # --- polling ----------------------------------------------------------------------------------
    async def poll(self) -> None:
        """Scan once: load, swap and retire versions to follow the repository and the policies."""
        if self._stopping:
            return
        try:
            scan = await asyncio.get_running_loop().run_in_executor(None, self.source.scan)
        except StorageError as exc:  # NOTE: keep serving what is loaded; say so once per outage
            if not self._outage:
                log.warning("%s; serving what is loaded, retrying every %.1f s", exc,
                            self.settings.poll_interval_s)  # fmt: skip
            else:
                log.debug("still cannot list the repository: %s", exc)
            self._outage = str(exc)
            self.metrics.repository_errors.labels("list").inc()
            self.metrics.repository_up.set(0)
            return
        self.metrics.repository_up.set(1)
        if self._outage:
            log.info("model repository %s can be listed again", self.source)
            self._outage = ""
        if not self._misplaced_said and scan.hint:
            log.warning("%s", scan.hint)
            self._misplaced_said = True
        names = set(scan.models)
        for name in sorted(names):
            if self._stopping:  # NOTE: close() may run while a load is awaited
                return
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = Model(name, self.settings.for_model(name))
                self.metrics.model_seen(name)
            await self._follow(model, scan.models[name])
        for name in sorted(set(self.models) - names):
            log.info("model %s left the repository; unloading it", name)
            model = self.models.pop(name)
            for key in [k for k in self._unfetched if k[0] == name]:
                del self._unfetched[key]
            self._swap(model, {})
            self.metrics.model_gone(name)
        self.scanned = True

    @property
    def ready(self) -> bool:
        """The server is ready once the first scan is done and a model serves."""
        return self.scanned and any(m.serving for m in self.models.values())

    async def _follow(self, model: Model, on_disk: list[int]) -> None:
        policy = VersionPolicy(model.settings.version_policy or "latest")
        now = time.monotonic()
        for key in [k for k in self._unfetched if k[0] == model.name and k[1] not in on_disk]:
            del self._unfetched[key]
        for number, known in list(model.versions.items()):
            gone = number not in on_disk and known.state in (State.UNLOADED, State.FAILED)
            changed = known.state is State.FAILED and known.stamp != self.source.stamp(model.name, number)
            unfetched = self._unfetched.get((model.name, number))
            if changed:
                self._unfetched.pop((model.name, number), None)
            retry = known.state is State.FAILED and unfetched is not None and now >= unfetched[2]
            if gone or changed or retry:  # forget deleted versions; retry failed ones that changed
                del model.versions[number]  # (or whose download failed, once their backoff is over)
        while True:
            candidates = [v for v in on_disk if not self._failed(model, v)]
            wanted = policy.select(candidates)
            missing = [v for v in wanted if not (v in model.versions and model.versions[v].ready)]
            if not missing:
                break
            for number in missing:
                await self._load(model, number)
                if self._stopping:
                    return
        failed = sum(1 for v in model.versions.values() if v.state is State.FAILED)
        self.metrics.failed_versions.labels(model.name).set(failed)
        selected = {v: loaded for v in wanted if (loaded := model.versions[v].loaded) is not None}
        if selected.keys() != model.serving.keys():
            self._swap(model, selected)

    @staticmethod
    def _failed(model: Model, number: int) -> bool:
        known = model.versions.get(number)
        return known is not None and known.state is State.FAILED

    def _swap(self, model: Model, selected: dict[int, LoadedVersion]) -> None:
        old = model.serving
        model.serving = selected
        if selected:
            log.info("model %s now serving version(s) %s", model.name, ", ".join(map(str, sorted(selected))))
        for number, served in old.items():
            if number not in selected:
                task = asyncio.get_running_loop().create_task(self._retire(model.versions[number], served))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        if self._on_change is not None:
            self._on_change(model.name, bool(selected))

    async def _load(self, model: Model, number: int) -> None:
        """Load a version, or record it as FAILED: retried once its files change, and one whose
        files could not be downloaded also after a backoff that doubles with each failure, from
        ``poll_interval_s`` up to ``MAX_FETCH_BACKOFF_S`` (the store may be the cause, not it)."""
        stamp = self.source.stamp(model.name, number)
        record = model.versions[number] = VersionRecord(number, stamp)
        log.info("loading %s version %d (%s backend)", model.name, number, model.settings.backend)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        path = None
        try:
            path = await loop.run_in_executor(None, self.source.fetch, model.name, number)
            manifest, backend = await loop.run_in_executor(
                None, load_version, path, self.settings, model.settings
            )
            reference = await loop.run_in_executor(None, load_reference, path, manifest)
            if reference is None and self.settings.for_model(model.name).unknown_novelty_above is not None:
                log.warning(
                    "model %s version %d has no reference statistics: unknown_novelty_above does not "
                    "apply to it (export it again with this tlserve)", model.name, number,
                )  # fmt: skip
        except StorageError as exc:
            if self._stopping:  # NOTE: the download was abandoned because the server is closing
                del model.versions[number]
                return
            failures = self._unfetched.get((model.name, number), (stamp, 0, 0.0))[1] + 1
            wait = min(self.settings.poll_interval_s * 2 ** min(failures - 1, 20), MAX_FETCH_BACKOFF_S)
            self._unfetched[(model.name, number)] = (stamp, failures, time.monotonic() + wait)
            record.state, record.error = State.FAILED, f"not downloaded (tried again in {wait:.0f} s): {exc}"
            log.warning("model %s version %d %s", model.name, number, record.error)
            self.metrics.repository_errors.labels("download").inc()
            return
        except Exception as exc:  # any failure of a version must leave the server serving the others
            self._unfetched.pop((model.name, number), None)  # NOTE: downloaded: retried when it changes
            if path is not None:
                await loop.run_in_executor(None, self.source.release, path)
            # NOTE: clients see this (ListModels, GetModelStatus): no absolute server paths
            error = f"{type(exc).__name__}: {exc}"
            for local in self.source.local_paths():
                error = error.replace(f"{local}/", "").replace(local, "")
            record.state, record.error = State.FAILED, error.splitlines()[0][:500]
            log.error("model %s version %d failed to load: %s", model.name, number, record.error)
            self.metrics.load_failures.labels(model.name).inc()
            log.debug("load failure", exc_info=True)
            return
        self._unfetched.pop((model.name, number), None)
        seconds = time.perf_counter() - start
        self.metrics.load_duration.labels(model.name).observe(seconds)
        metrics = self.metrics.version(model.name, number, backend.name, backend.providers, backend.artifact)
        metrics.watch(manifest.labels, reference)
        batcher = Batcher(
            backend.outputs, self._compute, enabled=self.settings.batching,
            max_batch_size=min(self.settings.dynamic_batch_size, self.settings.max_batch_size),
            max_batch_delay_s=self.settings.max_batch_delay_s,
            max_queue_size=self.settings.max_queue_size, observer=metrics,
        )  # fmt: skip
        metrics.serving(self.settings.max_queue_size)
        record.manifest = manifest
        record.loaded = LoadedVersion(
            model.name, number, manifest, backend, batcher, metrics, path, reference
        )
        record.state = State.AVAILABLE
        copied = manifest.exported_as != f"{model.name}/{number}"
        log.info(
            "loaded %s version %d in %.2f s: %s on %s%s", model.name, number, seconds,
            backend.artifact, ", ".join(backend.providers),
            f" (a copy: exported as {manifest.exported_as})" if copied else "",
        )  # fmt: skip

    async def _retire(self, record: VersionRecord, served: LoadedVersion) -> None:
        record.state = State.UNLOADING
        await served.idle.wait()
        await served.batcher.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, served.backend.unload)
        await loop.run_in_executor(None, self.source.release, served.path)
        served.metrics.remove()
        record.loaded, record.state = None, State.UNLOADED
        log.info("unloaded %s version %d", served.name, served.version)

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a failing scan is logged and retried at the next interval."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.poll()
            except Exception:
                log.exception("repository scan failed; retrying in %.1f s", self.settings.poll_interval_s)

    def interrupt(self) -> None:
        """The server is stopping (a signal): load nothing more, abandon a download in progress."""
        self._stopping = True
        self.source.interrupt()

    async def close(self) -> None:
        """Stop following the repository; drain and unload everything."""
        self._stopping = True
        for model in list(self.models.values()):
            self._swap(model, {})
        self.source.interrupt()  # NOTE: a download in a worker thread stops at its next batch
        if self._retiring:
            await asyncio.gather(*self._retiring)
        await asyncio.get_running_loop().run_in_executor(None, self.source.close)
