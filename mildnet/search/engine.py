"""The one search service: a model, a catalogue and the store that caches the catalogue's embeddings.

The app, the CLI and the HTTP API all open a :class:`SearchEngine` and ask it; none of them decides on its own
which stored set belongs to the model, whether a calibration applies, or what "close match" means::

    engine = SearchEngine.open(LoadedModel.from_run(run), Catalogue.registered("sample"), open_store(spec))
    if engine.pending().status != "reused":
        engine.update(progress)           # embeds new/changed photos, refits the catalogue's calibration
    result = engine.query_image(photo_bytes, k=5, filters={"category": "dress"})
    result.results[0].id, result.results[0].match, result.close_match

Match strength and the close-match verdict come from the catalogue's own calibration (fitted on its photos when
it is embedded) where there is one; else the run's calibration decides "close match" against the catalogue's
nearest-neighbour reference and results show plain cosines; an uncalibrated model gives neither.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mildnet import calibration as cal
from mildnet import catalogue_calibration as cc
from mildnet import embeddings
from mildnet.errors import DataError, MildnetError
from mildnet.search.batching import QueryBatcher
from mildnet.search.catalogue import Catalogue, FilterError
from mildnet.search.index import Index, build_index
from mildnet.search.model import LoadedModel
from mildnet.search.searcher import Hit, check_positive_int
from mildnet.store import EmbeddingSet

__all__ = ["Catalogue", "FilterError", "LoadedModel", "NotEmbedded", "Pending", "Result", "SearchEngine",
           "SearchResult", "UnknownId"]

Progress = Callable[[int, int], None]

# Shown when a run's calibration decides "close match" but the catalogue has none of its own.
RUN_CALIBRATION_NOTE = ("Scores are cosine similarities (1 = identical): match strengths appear once this catalogue "
                        "has its own calibration, made when it is embedded.")


# Concurrent queries are batched from this catalogue size: in-process on 2 cores (one BLAS thread a pass), 100k x
# 256 went from 103 to 161 q/s with 8 threads and 106 to 247 with 32; at 10k a pass is ~0.5 ms and batching cost
# 5-10% of the throughput instead.
BATCH_FROM_ROWS = 25_000


class NotEmbedded(MildnetError):
    """The store holds no usable embeddings of this catalogue for this model: embed it first."""


class UnknownId(DataError):
    """A product id the searched catalogue does not have."""


@dataclasses.dataclass(frozen=True)
class Result:
    """One similar product: its catalogue ``id`` (photo path relative to the catalogue folder), cosine ``score``
    (1 = identical), ``match`` strength in [0, 1] (None where the catalogue is not calibrated) and its table
    ``row`` (product_id, category, colour, title, url... as text)."""

    id: str
    score: float
    match: float | None = None
    row: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The answer to one query, the same object whichever caller asked.

    ``close_match``: whether the best result is close enough to call it the same kind of product (None where
    nothing is calibrated), ``reason``: why not, in a shopper's words; ``calibration``: ``"catalogue"``,
    ``"run"`` or None; ``note``: what the scores mean when they are not match strengths.
    """

    results: list[Result]
    close_match: bool | None
    reason: str | None
    calibration: str | None
    note: str | None
    query: dict
    n_catalog: int
    key: str
    model: str

    def to_dict(self, image_root: Path | None = None) -> dict:
        """The JSON shape of ``search --json`` and the HTTP API (``path`` only with ``image_root``)."""
        results = []
        for r in self.results:
            item = {"id": r.id, "score": round(r.score, 6), "match": None if r.match is None else round(r.match, 4)}
            if image_root is not None:
                item["path"] = str(Path(image_root) / r.id)
            item.update({k: v for k, v in r.row.items() if k not in item})
            results.append(item)
        return {"query": self.query, "key": self.key, "model": self.model, "n_catalog": self.n_catalog,
                "close_match": self.close_match, "close_match_reason": self.reason,
                "calibrated": self.calibration is not None, "calibration": self.calibration, "note": self.note,
                "results": results}


@dataclasses.dataclass(frozen=True)
class Pending:
    """What :meth:`SearchEngine.update` would do now: ``status`` as :class:`embeddings.UpdatePlan`'s
    (``"reused"``: nothing to do; ``"built"``/``"rebuilt"``: everything is embedded), photos ``new`` to the
    stored set, photos whose file ``changed``, ids ``removed`` from the catalogue and ``missing`` files."""

    status: str
    new: int
    changed: int
    removed: int
    missing: int
    catalog_fingerprint: str

    @property
    def up_to_date(self) -> bool:
        return self.status == "reused"

    @property
    def embed(self) -> int:
        return self.new + self.changed

    def describe(self) -> str:
        """"N new, M removed" ("photos replaced" when only files changed), as the app says it."""
        if not self.new and not self.removed:
            return "photos replaced"
        return f"{self.new:,} new, {self.removed:,} removed"


@dataclasses.dataclass(frozen=True)
class _State:
    """One consistent view of the stored set: swapped whole by :meth:`SearchEngine.update`, so a query running
    meanwhile sees the old or the new catalogue, never half of each."""

    embeddings: EmbeddingSet
    searcher: Index
    own: cc.CatalogueCalibration | None
    own_note: str | None
    rows: dict[str, dict[str, str]]
    # Catalogue columns coded against this set's rows, filled by the first filter on each (Catalogue.mask).
    filter_codes: dict = dataclasses.field(default_factory=dict)
    cache: dict = dataclasses.field(default_factory=dict)  # what is computed once per set (reference)


class SearchEngine:
    """Search over one catalogue with one model; open with :meth:`open`. Thread-safe for queries; one update
    at a time."""

    def __init__(self, model: LoadedModel, catalogue: Catalogue, store, key: str, state: _State | None,
                 index: str = "exact", index_options: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.catalogue = catalogue
        self.store = store
        self.key = key
        self.index = index
        self.index_options = dict(index_options or {})
        self._state = state
        self._lock = threading.Lock()
        self._batcher = QueryBatcher()

    # -- opening and updating -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, model: LoadedModel, catalogue: Catalogue, store, *, calibrate: bool = True, index: str = "exact",
             index_options: Mapping[str, Any] | None = None) -> SearchEngine:
        """The engine over what ``store`` holds for this model and catalogue, without embedding anything: a set
        made by another model, another input size or an older embedding version counts as absent
        (:attr:`ready` False; :meth:`update` embeds it). A set older than the catalogue's photos is served as
        it is (:meth:`pending` says what changed). ``calibrate``: fit the catalogue's calibration now when
        the store does not keep one for this set (the first search of a CLI session needs it anyway).
        ``index``: the back end that finds the top k (:mod:`mildnet.search.index`; ``exact`` by default)."""
        key = embeddings.cache_key(catalogue.name, model.fingerprint)
        stored = store.get(key)
        engine = cls(model, catalogue, store, key, None, index, index_options)
        if stored is not None and engine._usable(stored):
            engine._state = engine._state_of(stored, calibrate)
        return engine

    def _usable(self, stored: EmbeddingSet) -> bool:
        return (len(stored) > 0 and stored.model_fingerprint == self.model.fingerprint
                and stored.meta.get("image_size") == self.model.image_size
                and stored.meta.get("embedding_version") == embeddings.EMBEDDING_VERSION)

    def _state_of(self, stored: EmbeddingSet, calibrate: bool) -> _State:
        labels = self.catalogue.table
        if calibrate:
            # Without the photos (a store copied to another machine) the calibration is fitted from vectors only.
            here = self.catalogue.image_root.is_dir()
            own, note = cc.refresh(self.store, self.key, stored, self.model.model if here else None,
                                   self.catalogue.image_root, labels, self.model.image_size,
                                   types=self.model.product_types)
            note = note or self.model.types_note
        else:
            try:
                own, note = cc.load_for(self.store, self.key, stored, labels, self.model.product_types), None
            except cal.CalibrationError as exc:
                own, note = None, str(exc)
        rows = self.catalogue.rows()
        options = dict(self.index_options)
        if self.index == "milvus":
            options.setdefault("rows", rows)  # the table's columns go into the collection: filters run in Milvus
        return _State(stored, build_index(self.index, stored, **options), own, note, rows)

    @property
    def ready(self) -> bool:
        return self._state is not None

    def pending(self) -> Pending:
        """What an update would embed or drop now (one stat a photo; no model call)."""
        ids, signatures = embeddings.catalog_state(self.catalogue.image_root, self.catalogue.ids)
        state = self._state
        stored = state.embeddings if state else None
        plan = embeddings.plan_update(stored, ids, signatures, model_fp=self.model.fingerprint,
                                      image_size=self.model.image_size)
        before = set(stored.ids) if stored is not None else set()
        if stored is not None:
            before |= {e.get("id") for e in stored.meta.get("skipped", []) if isinstance(e, dict)}
        new = sum(1 for i in plan.embed if i not in before)
        return Pending(plan.status, new, len(plan.embed) - new, len(plan.dropped), len(plan.missing),
                       plan.catalog_fp)

    def update(self, progress: Progress | None = None, *, batch_size: int = 64, rebuild: bool = False,
               extra_meta: dict | None = None) -> embeddings.EmbedResult:
        """Embeds what changed (everything with ``rebuild``), stores the set, refits the catalogue's calibration
        and switches queries to the new set."""
        with self._lock:
            meta = {"include": list(self.catalogue.include), "source": self.model.label, **(extra_meta or {})}
            result = embeddings.update_catalog(
                self.model.model, self.catalogue.image_root, self.store, list(self.catalogue.ids),
                dataset=self.catalogue.name, image_size=self.model.image_size, model_fp=self.model.fingerprint,
                model_name=self.model.name, progress=progress, batch_size=batch_size, rebuild=rebuild,
                extra_meta=meta)
            # Served as the store keeps it (a float16 store halves it), exactly as a later open() reads it back,
            # without reading it back: a big catalogue's set from Redis is ~100 MB at 100k photos.
            wanted = getattr(self.store, "dtype", None)
            stored = result.embeddings
            if wanted not in (None, stored.dtype):
                stored = stored.astype(wanted)
            self._state = self._state_of(stored, calibrate=True)
        return result

    # -- what is searched ----------------------------------------------------------------------------------------

    def _current(self) -> _State:
        state = self._state
        if state is None:
            raise NotEmbedded(
                f"catalogue {self.catalogue.name} has no embeddings for this model (fingerprint "
                f"{self.model.fingerprint[:16]}) in {self.store.describe()}; run `python -m mildnet embed "
                f"--dataset {self.catalogue.name}` with the same model and store first")
        return state

    @property
    def embeddings(self) -> EmbeddingSet:
        return self._current().embeddings

    @property
    def searcher(self) -> Index:
        """The index back end over the stored set (``exact``: :class:`~mildnet.search.searcher.Searcher`)."""
        return self._current().searcher

    def __len__(self) -> int:
        return len(self._current().embeddings)

    @property
    def catalogue_calibration(self) -> tuple[cc.CatalogueCalibration | None, str | None]:
        """``(the catalogue's own calibration or None, why not)``."""
        state = self._current()
        return state.own, state.own_note

    def reference(self, state: _State | None = None) -> np.ndarray:
        """Leave-one-out nearest-neighbour cosines of the catalogue (for the run calibration's verdict), computed
        once per stored set (kept with it, so a query running across an update never mixes two sets)."""
        state = state or self._current()
        if "reference" not in state.cache:
            state.cache["reference"] = cal.catalogue_reference(state.embeddings.vectors)
        return state.cache["reference"]

    # -- queries ------------------------------------------------------------------------------------------------

    def query_image(self, source, k: int = 5, filters: Mapping[str, Any] | None = None,
                    name: str | None = None) -> SearchResult:
        """Products like a photo (a path, uploaded bytes, or a decoded array); ImageError for one that cannot
        be read. ``name``: what to call the query in the result (default: the path)."""
        check_positive_int("k", k)
        vector = self.model.embed(source)
        label = name if name is not None else (str(source) if isinstance(source, (str, Path)) else "upload")
        return self.query_vector(vector, k, filters, query={"image": label})

    def query_id(self, item_id: str, k: int = 5, filters: Mapping[str, Any] | None = None) -> SearchResult:
        """Products like a catalogue product (``item_id``: its photo id); the product's own photo is left out."""
        check_positive_int("k", k)
        state = self._current()
        if item_id not in state.embeddings:
            example = state.embeddings.ids[0]
            raise UnknownId(f"id {item_id!r} is not in catalogue {self.catalogue.name} ({len(state.embeddings):,} "
                            f"photos); ids are photo paths relative to the catalogue folder, e.g. {example!r}")
        vector = state.embeddings.vectors[state.embeddings.index[item_id]].astype(np.float32)
        return self.query_vector(vector, k, filters, query={"id": item_id}, exclude=[item_id], state=state)

    def query_vector(self, vector: np.ndarray, k: int = 5, filters: Mapping[str, Any] | None = None, *,
                     query: dict | None = None, exclude: Sequence[str] | None = None,
                     state: _State | None = None) -> SearchResult:
        """Products like an embedding (the model's unit vector of a photo)."""
        k = check_positive_int("k", k)
        state = state or self._current()
        allowed = self.catalogue.mask(state.embeddings.ids, filters, state.filter_codes)
        own = state.own
        # The close-match score may average more results than are shown: ask for enough, show what was asked.
        wanted = max(k, own.rule.k) if own is not None else k
        # Milvus runs the filter itself (an expression on the columns it was given); the mask stays the check.
        pushed = {"filters": filters} if filters and self.index == "milvus" else {}
        # Only the exact back end's answers do not depend on the batch (an HNSW search's width follows its k).
        if allowed is None and not pushed and self.index == "exact" and len(state.embeddings) >= BATCH_FROM_ROWS:
            # Concurrent queries (API workers, app sessions) share one pass over the vectors.
            hits = self._batcher.query(state.searcher, vector, wanted, exclude)
        else:
            hits = state.searcher.query(vector, k=wanted, exclude_ids=exclude, allowed=allowed, **pushed)[0]
        matches, close, reason, kind, note = self._assess(hits, state, vector)
        results = [Result(h.id, h.score, m, state.rows.get(h.id, {})) for h, m in zip(hits[:k], matches[:k])]
        return SearchResult(results, close, reason, kind, note, dict(query or {}), len(state.embeddings), self.key,
                            self.model.name)

    def _assess(self, hits: list[Hit], state: _State, vector: np.ndarray):
        """``(match strengths, close match, reason, calibration kind, note)`` of a result list for query ``vector``."""
        own, own_note = state.own, state.own_note
        scores = [h.score for h in hits]
        if own is not None:
            kinds = self.model.kinds(vector) if own.rule.needs_kinds else None
            verdict = cal.assess(scores, own.match, rule=own.rule, ids=[h.id for h in hits], kinds=kinds)
            return verdict.matches, verdict.close_match, verdict.reason, "catalogue", None
        run_calibration = self.model.calibration
        if run_calibration is None:
            note = "; ".join(n for n in (own_note, self.model.calibration_note) if n) or None
            return [None] * len(hits), None, None, None, note
        # The run's calibration was fitted on its own validation photos, not this catalogue's: good enough to say
        # "no close match", not to put a percentage on each result. Those show their plain similarity.
        verdict = cal.assess(scores, run_calibration, self.reference(state))
        return [None] * len(hits), verdict.close_match, verdict.reason, "run", own_note or RUN_CALIBRATION_NOTE
