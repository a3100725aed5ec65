"""Deserialised networks kept in memory by each API process, keyed by (model uid, version), and the
networks a request computes with (``ServedModels``).

A request asks the store for the model's current (uid, version) (one indexed read on SQLite, one
HMGET on Redis) and serves the cached network of exactly that key, or loads and caches it. A new
version (a job committed, weights replaced, on any replica) or a re-created model (new uid) is a
new key, so stale weights are never served; old keys age out by least-recent use within
``NN_MODEL_CACHE_MB``.
"""

import dataclasses
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from neural_net import Network

from api.errors import ModelNotFound, VersionNotFound
from api.storage.base import ModelRecord, Store

# multiply-adds (rows x parameters) of a prediction computed on the event loop: about 0.2 ms; more goes to a thread
INLINE_WORK = 1_000_000


@dataclass
class CachedModel:
    net: Network
    record: ModelRecord  # the record of this version (info, version); buffer size and latest job as of loading
    nbytes: int
    # Inference keeps no state on the layers; gradients train-forward and keep it (and workspaces): they hold this
    # lock, as two threads may serve the same cached network, through `exclusive`.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def exclusive(self) -> Iterator[Network]:
        """The network, to this thread alone; what the call kept on its layers is dropped after it, so a cached
        network holds what NN_MODEL_CACHE_MB counts (a 4,000-row gradient left 45 MB on each model it ran on)."""
        with self.lock:
            try:
                yield self.net
            finally:
                for layer in self.net.layers:
                    layer.clear_workspaces()


def network_bytes(net: Network, blob_size: int) -> int:
    """Memory a loaded network holds: its saved bytes (parameters, optimizer state, buffers) plus the
    gradient twin of the parameters."""
    return blob_size + int(net.n_params) * net.dtype.itemsize


class ModelCache:
    """Least-recently-used, bounded by bytes. ``max_bytes=0`` turns it off (every get misses)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], CachedModel] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}  # one loader per key; the others wait for it
        self.hits = self.misses = self.evictions = 0

    def peek(self, uid: str, version: int) -> CachedModel | None:
        """The entry of (uid, version) or None, neither counted nor made recent (``get`` does both)."""
        with self._lock:
            return self._entries.get((uid, version))

    def get(self, uid: str, version: int) -> CachedModel | None:
        with self._lock:
            entry = self._entries.get((uid, version))
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end((uid, version))
            self.hits += 1
            return entry

    def get_or_load(self, uid: str, version: int, load: Callable[[], tuple[Network, ModelRecord, int]]) -> CachedModel:
        """The entry of (uid, version), calling ``load`` (-> network, its record, its saved size) on a miss. Concurrent
        misses of one key load once: 16 requests arriving together for a new version deserialise it once, not 16 times.
        The loaded record's key is what gets cached (it may be newer than the one asked for)."""
        entry = self.get(uid, version)
        if entry is not None:
            return entry
        with self._lock:
            gate = self._loading.setdefault((uid, version), threading.Lock())
        try:
            with gate:
                with self._lock:
                    entry = self._entries.get((uid, version))
                return entry if entry is not None else self.put(*load())
        finally:
            with self._lock:
                self._loading.pop((uid, version), None)

    def put(self, net: Network, record: ModelRecord, blob_size: int) -> CachedModel:
        """Caches ``net`` as ``record``'s (uid, version) and returns its entry; a network larger than the
        whole budget is returned uncached."""
        entry = CachedModel(net, record, network_bytes(net, blob_size))
        if entry.nbytes > self.max_bytes:
            return entry
        key = (record.uid, record.version)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
        return entry

    def discard(self, model_id: str) -> None:
        """Drops every version of a model (it was deleted)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.record.model_id == model_id]:
                self._bytes -= self._entries.pop(key).nbytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


class ServedModels:
    """The networks a process computes with: the store's current (uid, version) of the model, read on every call so
    that a change on any replica is seen, and the cached network of exactly that key, loaded on a miss. Entries are
    read-only: a caller that changes a network loads its own."""

    def __init__(self, store: Store, cache: ModelCache):
        self.store, self.cache = store, cache

    def current(self, model_id: str) -> CachedModel:
        return self._current(model_id, *self._stamp(model_id))

    def version(self, model_id: str, version: int | None) -> CachedModel:
        """``version`` of the model (the current one when None). An older kept version never changes, so it is
        cached as (uid, version) like the current one; but it may be pruned (NN_KEEP_VERSIONS) on any replica, so
        the store is asked whether it is still kept (one small read) before its cached network is served:
        VersionNotFound (404) when it was pruned or never made."""
        uid, current = self._stamp(model_id)
        if version is None or version == current:
            model = self._current(model_id, uid, current)
            if version is None or (model.record.uid, model.record.version) == (uid, version):
                return model
            # a newer version came in since the stamp (its load is newer): the one asked for is kept, read below
        if version > current or not self.store.version_kept(uid, version):
            raise VersionNotFound(model_id, version)

        def load() -> tuple[Network, ModelRecord, int]:
            blob, kept = self.store.get_version(model_id, version)
            record = dataclasses.replace(self.store.get_model(model_id), uid=kept.uid, version=kept.version,
                                         info=kept.info, updated_at=kept.created_at)
            return Network.from_bytes(blob), record, len(blob)

        return self.cache.get_or_load(uid, version, load)

    def _stamp(self, model_id: str) -> tuple[str, int]:
        try:
            return self.store.model_stamp(model_id)
        except ModelNotFound:
            self.cache.discard(model_id)
            raise

    def _current(self, model_id: str, uid: str, version: int) -> CachedModel:
        def load() -> tuple[Network, ModelRecord, int]:
            blob, record = self.store.load_model(model_id)  # may be newer than the stamp: it is cached as what it is
            return Network.from_bytes(blob), record, len(blob)

        return self.cache.get_or_load(uid, version, load)

    async def on_loop(self, model_id: str, rows: int) -> CachedModel | None:
        """The cached current version, where predicting ``rows`` with it fits on the event loop (INLINE_WORK: the hop
        to a thread costs more than one sample's forward pass); None for a thread: more work, a cache miss (loading
        deserialises), the cache off, or a store that cannot answer at once. Raises ModelNotFound."""
        if self.cache.max_bytes == 0:
            return None
        try:
            stamp = await self.store.model_stamp_on_loop(model_id)
        except ModelNotFound:
            self.cache.discard(model_id)
            raise
        model = self.cache.peek(*stamp) if stamp is not None else None
        if model is None or rows * model.net.n_params > INLINE_WORK:
            return None
        return self.cache.get(*stamp)  # counted as a hit
