"""Searching a catalogue: the exact cosine searcher and the one engine the app, the CLI and the HTTP API call.

``searcher``  Searcher / Hit: exact top-k cosine (BLAS matmul + argpartition + float64 re-scoring), the reference
``plot``      plot_results: a query and its results as a PNG grid
``catalogue`` Catalogue: what is searched (a registered dataset or a folder: ids, image folder, table)
``model``     LoadedModel: which model embeds (a run or a zoo model: fingerprint, input size, calibration)
``engine``    SearchEngine.open(model, catalogue, store): pending() / update() / query_image / query_id -> SearchResult
"""

from mildnet.search.searcher import Hit, Searcher

__all__ = ["Hit", "Searcher", "plot_results"]


def __getattr__(name: str):
    # The plot pulls in matplotlib: loaded on first use, not by every `from mildnet.search import Searcher`.
    if name == "plot_results":
        from mildnet.search.plot import plot_results

        return plot_results
    raise AttributeError(f"module 'mildnet.search' has no attribute {name!r}")
