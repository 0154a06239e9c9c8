"""Evaluation page: triplet accuracy (overall, per split, per triplet type), distance distributions,
retrieval metrics and training curves, for one run or several side by side."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from mildnet.runs import HISTORY_FILE
from mildnet.ui import layout, owner, resources
from mildnet.ui.layout import Context
from mildnet.ui.runs import Run

TYPE_LABELS = {"in_class": "in-class", "out_of_class": "out-of-class", "wild_query": "wild query",
               "catalog_query": "catalog query"}
BASELINE_LABELS = {"pixels": "pixels 32×32", "histogram": "colour histogram", "imagenet": "ImageNet features",
                   "imagenet+histogram": "ImageNet + histogram"}
MAX_RUNS = 4


# Drawn by layout.run_page before anything slow (the sidebar, preparing the data): the first thing on screen.
HERO = ("Evaluation", "How well a model ranks: a triplet is correct when the query is closer to the "
        "positive than to the negative. Retrieval: every image queries the others of its split.")


def render(ctx: Context) -> None:
    if not owner.owner_only("evaluate models"):
        return
    if not ctx.runs:
        layout.no_model_message(ctx)
        return
    by_key = {r.key: r for r in ctx.runs}
    default = [ctx.run.key] if ctx.run else [ctx.runs[0].key]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = c1.multiselect("Runs", list(by_key), default=default, format_func=lambda k: by_key[k].label,
                            max_selections=MAX_RUNS, key="mn_eval_runs",
                            help=f"Pick up to {MAX_RUNS} runs to compare side by side.")
    splits = [s for s in ("val", "test", "train") if s in ctx.dataset.split_names]
    split = c2.selectbox("Split", splits, key="mn_eval_split")
    if not chosen:
        st.info("Pick at least one run.", icon=":material/checklist:")
        return
    runs = [by_key[k] for k in chosen]
    reports = _evaluate(ctx, runs, splits)
    names = _short_names(runs)

    _scores(runs, names, reports, split)
    _baselines(ctx, runs, names, reports, split)
    _accuracy_charts(runs, names, reports, splits, split)
    _distances(runs, names, reports, split)
    _retrieval(runs, names, reports, split)
    _close_match(ctx, runs, names)
    st.subheader("Training history")
    _history(runs, names, ctx.dataset.name)


def _scores(runs: list[Run], names: dict[str, str], reports: dict, split: str) -> None:
    st.subheader(f"Scores on {split}")
    if split == "train":
        st.caption("The training triplets: the models saw these while learning, so the figures are optimistic. "
                   "Pick val or test for how they do on new photos.")
    st.dataframe(_score_table(runs, names, reports, split), hide_index=True,
                 column_config={
                     "triplet accuracy": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                                         format="percent"),
                     **{c: st.column_config.NumberColumn(format="percent")
                        for c in ("in-class", "out-of-class", "recall@1", "recall@5", "recall@10", "mAP")}})


def _accuracy_charts(runs: list[Run], names: dict[str, str], reports: dict, splits: list[str], split: str) -> None:
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Triplet accuracy per split**")
        frame = pd.DataFrame([{"run": names[r.key], "split": s, "accuracy": reports[r.key][s].triplet_accuracy}
                              for r in runs for s in splits])
        st.altair_chart(_grouped_bars(frame, "split", splits), width="stretch")
    with right:
        st.markdown(f"**Triplet accuracy per type** ({split})")
        rows = [{"run": names[r.key], "type": TYPE_LABELS.get(t, t), "accuracy": v["accuracy"], "n": v["n"]}
                for r in runs for t, v in reports[r.key][split].by_type.items()]
        if rows:
            order = [TYPE_LABELS[t] for t in TYPE_LABELS if any(row["type"] == TYPE_LABELS[t] for row in rows)]
            st.altair_chart(_grouped_bars(pd.DataFrame(rows), "type", order), width="stretch")
        else:
            st.caption("The dataset has no catalog with categories or views, so triplets have no type.")


def _distances(runs: list[Run], names: dict[str, str], reports: dict, split: str) -> None:
    st.subheader(f"Distances on {split}")
    st.caption("Squared distance between unit embeddings (0 = identical, 4 = opposite). A good model keeps the "
               "positives (green) left of the negatives (red); a triplet is correct when its positive is closer.")
    cols = st.columns(min(len(runs), 2))
    for i, run in enumerate(runs):
        with cols[i % len(cols)]:
            st.markdown(f"**{names[run.key]}**")
            st.altair_chart(_histogram(reports[run.key][split]), width="stretch")


def _retrieval(runs: list[Run], names: dict[str, str], reports: dict, split: str) -> None:
    st.subheader("Retrieval")
    rows = []
    for run in runs:
        retrieval = reports[run.key][split].retrieval or {}
        for key, value in retrieval.items():
            if key.startswith("recall@"):
                rows.append({"run": names[run.key], "k": int(key.split("@")[1]), "recall": value})
    if not rows:
        st.caption("No product ids known for this split, so retrieval cannot be scored.")
        return
    frame = pd.DataFrame(rows)
    chart = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("k:Q", title="k (results shown)", scale=alt.Scale(domain=[0, max(frame["k"]) + 1]),
                axis=alt.Axis(values=sorted(frame["k"].unique()), labelAngle=0)),
        y=alt.Y("recall:Q", title="recall@k", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["run", "k", alt.Tooltip("recall:Q", format=".1%")])
    st.altair_chart(chart.properties(height=260), width="stretch")


def close_match_table(runs: list[Run], names: dict[str, str], found: dict,
                      embedded: dict | None = None) -> pd.DataFrame:
    """One row per run: how its close-match decision was tuned on this catalogue (``found``: run key -> the
    catalogue calibration or None; ``embedded``: run key -> whether the catalogue is embedded with it yet). The
    rates are those of the catalogue's own simulation, which the threshold was chosen on: real photos of things
    the shop does not sell are rejected far more often (docs/calibration.md)."""
    rows = []
    for run in runs:
        own = found.get(run.key)
        rule = own.rule if own is not None else None
        if rule is not None:
            decided = rule.method
        elif embedded is not None and not embedded.get(run.key, True):
            decided = "not embedded yet (search once to embed)"
        else:
            decided = "run's own calibration"
        rows.append({"model": names[run.key], "decided by": decided,
                     "score": None if rule is None else rule.score,
                     "threshold": None if rule is None else round(rule.threshold, 4),
                     "simulated ROC AUC": None if rule is None else rule.auc,
                     "simulated: sold types called close": None if rule is None else rule.in_called_close,
                     "simulated: unsold types not close": None if rule is None else rule.out_called_not_close})
    return readable(pd.DataFrame(rows))


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """Empty cells as a table shows them: blank in number columns (NaN), a dash in text ones, never "None"."""
    out = frame.copy()
    for column in out.columns:
        values = out[column].dropna()
        if len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[column] = pd.to_numeric(out[column], errors="coerce")
        elif len(values) < len(out):
            out[column] = out[column].astype(object).where(out[column].notna(), "—")
    return out


def _close_match(ctx: Context, runs: list[Run], names: dict[str, str]) -> None:
    st.subheader("Close match")
    st.caption("Whether a query gets a close match, tuned on this catalogue: each category left out in turn stands "
               "for things it does not sell, each product left out for other photos of things it sells. The rates "
               "below are that simulation's, on which the threshold was chosen (a left-out type often has a near "
               "neighbour that stays, so it is harder than real photos of other products). Score `kind`: the model's "
               "product-type head recognises the catalogue's categories, and a photo is close when most of its type "
               "probability is on types the catalogue sells (a whole type left out in the simulation). Measure on "
               "real photos "
               "of things the shop sells and does not sell with `python -m mildnet evaluate --close-match`.")
    found, embedded = {}, {}
    for run in runs:
        engine = resources.engine(run, ctx.dataset)
        embedded[run.key] = engine.ready
        own, note = engine.catalogue_calibration if engine.ready else (None, None)
        found[run.key] = own
        if note:
            st.caption(f"{names[run.key]}: {note}")
    st.dataframe(close_match_table(runs, names, found, embedded), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="percent")
                                for c in ("simulated: sold types called close", "simulated: unsold types not close")})


def _evaluate(ctx: Context, runs: list[Run], splits: list[str]) -> dict:
    reports = {}
    for run in runs:
        found = layout.ensure_engine(run, ctx.dataset)
        with st.spinner(f"Scoring {run.label}…"):
            reports[run.key] = {s: resources.evaluation(run, ctx.dataset, s, found) for s in splits}
    return reports


def _baselines(ctx: Context, runs: list[Run], names: dict[str, str], reports: dict, split: str) -> None:
    st.subheader(f"What training bought ({split})")
    st.caption("The same triplets scored with no learning at all: raw 32×32 pixels, a colour histogram, "
               "SqueezeNet ImageNet features (no training), and those features plus the histogram. A run is "
               "worth its training by what it adds above them.")
    with st.spinner("Scoring the no-learning baselines (once per dataset and split)…"):
        summary = resources.baselines(ctx.dataset, split)
    # Both ImageNet baselines fail for the same reason (no weights): one message naming both, not two copies.
    reasons: dict[str, list[str]] = {}
    for name, entry in summary.items():
        if "unavailable" in entry:
            reasons.setdefault(entry["unavailable"], []).append(f"**{BASELINE_LABELS.get(name, name)}**")
    for reason, labels in reasons.items():
        st.warning(f"{' and '.join(labels)} baseline{'s' if len(labels) > 1 else ''} unavailable: {reason}",
                   icon=":material/cloud_off:")
    available = {n: e for n, e in summary.items() if "unavailable" not in e and e["triplet_accuracy"] is not None}
    if not available:
        return
    best = max(available, key=lambda n: available[n]["triplet_accuracy"])
    best_accuracy = available[best]["triplet_accuracy"]
    cols = st.columns(len(runs))
    for col, run in zip(cols, runs):
        accuracy = _nan_none(reports[run.key][split].triplet_accuracy)
        gain = None if accuracy is None else 100 * (accuracy - best_accuracy)
        col.metric(f"{names[run.key]} vs the best baseline", "n/a" if accuracy is None else f"{accuracy:.1%}",
                   delta=None if gain is None else f"{gain:+.1f} pts over {BASELINE_LABELS.get(best, best)}",
                   help="Triplet accuracy of the run, and its gain in percentage points over the strongest "
                   "no-learning baseline on the same triplets.")
    table = baseline_table(runs, names, reports, split, available)
    gains = [c for c in table.columns if c.startswith("gain")]
    st.dataframe(table, hide_index=True, column_config={
        "triplet accuracy": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        **{c: st.column_config.NumberColumn(format="percent") for c in ("in-class", "out-of-class")},
        **{c: st.column_config.NumberColumn(format="%+.1f pts") for c in gains}})
    st.altair_chart(_baseline_bars(table), width="stretch")


def baseline_table(runs: list[Run], names: dict[str, str], reports: dict, split: str,
                   baselines: dict[str, dict]) -> pd.DataFrame:
    """Runs then baselines, one row each, on the same triplets; a gain column per run (its accuracy minus the
    row's, in percentage points) filled on the baseline rows."""
    rows = []
    for run in runs:
        report = reports[run.key][split]
        rows.append({"model": names[run.key], "kind": "run", "triplet accuracy": _nan_none(report.triplet_accuracy),
                     **_type_cells(report.by_type)})
    for name, entry in baselines.items():
        row = {"model": BASELINE_LABELS.get(name, name), "kind": "baseline",
               "triplet accuracy": entry["triplet_accuracy"], **_type_cells(entry.get("by_type", {}))}
        for run in runs:
            column = "gain (pts)" if len(runs) == 1 else f"gain of {names[run.key]} (pts)"
            accuracy = _nan_none(reports[run.key][split].triplet_accuracy)
            row[column] = None if accuracy is None else round(100 * (accuracy - entry["triplet_accuracy"]), 2)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.dropna(axis=1, how="all") if len(frame) else frame


def _type_cells(by_type: dict) -> dict:
    return {TYPE_LABELS[t]: _nan_none((by_type.get(t) or {}).get("accuracy")) for t in ("in_class", "out_of_class")}


def _baseline_bars(table: pd.DataFrame) -> alt.Chart:
    frame = table[["model", "kind", "triplet accuracy"]].rename(columns={"triplet accuracy": "accuracy"})
    frame = frame.assign(label=frame["accuracy"].map(lambda v: "" if v is None or v != v else f"{v:.1%}"))
    base = alt.Chart(frame).encode(
        y=alt.Y("model:N", sort=list(frame.sort_values("accuracy", ascending=False)["model"]), title=None,
                axis=alt.Axis(labelLimit=240)),
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title="triplet accuracy"),
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=["run", "baseline"], range=["#1c7ed6", "#adb5bd"]),
                        legend=alt.Legend(orient="top")),
        tooltip=["model", "kind", alt.Tooltip("accuracy:Q", format=".1%")],
    )
    return (base.mark_bar() + base.mark_text(align="left", dx=3, fontSize=11).encode(text="label:N")).properties(
        height=alt.Step(30))


def _short_names(runs: list[Run]) -> dict[str, str]:
    return {r.key: r.short_name for r in runs}


def _score_table(runs, names, reports, split) -> pd.DataFrame:
    rows = []
    for run in runs:
        report = reports[run.key][split]
        types = report.by_type
        retrieval = report.retrieval or {}
        rows.append({
            "run": names[run.key],
            "triplets": report.n_triplets,
            "triplet accuracy": _nan_none(report.triplet_accuracy),
            "in-class": _nan_none(types.get("in_class", {}).get("accuracy")),
            "out-of-class": _nan_none(types.get("out_of_class", {}).get("accuracy")),
            "recall@1": retrieval.get("recall@1"),
            "recall@5": retrieval.get("recall@5"),
            "recall@10": retrieval.get("recall@10"),
            "mAP": retrieval.get("mAP"),
        })
    return readable(pd.DataFrame(rows))


def _nan_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _grouped_bars(frame: pd.DataFrame, x: str, order: list[str]) -> alt.Chart:
    frame = frame.assign(label=frame["accuracy"].map(lambda v: "" if v is None or v != v else f"{v:.0%}"))
    base = alt.Chart(frame).encode(
        x=alt.X(f"{x}:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("run:N"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
        color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["run", x, alt.Tooltip("accuracy:Q", format=".1%")],
    )
    bars = base.mark_bar(cornerRadiusTopLeft=3, cornerRadiusTopRight=3)
    text = base.mark_text(dy=-6, fontSize=11).encode(text="label:N")
    return (bars + text).properties(height=260)


def _histogram(report, bins: int = 30) -> alt.Chart:
    """Positive and negative distances overlaid, binned over the range the data actually covers (a barely
    trained model keeps every distance near 0, where the fixed [0, 4] bins would show one bar)."""
    d_pos, d_neg = np.asarray(report.d_pos, dtype=float), np.asarray(report.d_neg, dtype=float)
    top = float(max(d_pos.max(initial=0.0), d_neg.max(initial=0.0)))
    top = min(4.0, max(top * 1.05, 1e-3))
    edges = np.linspace(0.0, top, bins + 1)
    rows = []
    for values, label in ((d_pos, "d(query, positive)"), (d_neg, "d(query, negative)")):
        counts, _ = np.histogram(values, bins=edges)
        rows.extend({"pair": label, "from": float(lo), "to": float(hi), "count": int(n)}
                    for lo, hi, n in zip(edges[:-1], edges[1:], counts))
    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("from:Q", bin="binned", title="squared distance", scale=alt.Scale(domain=[0, top])),
        x2="to:Q",
        y=alt.Y("count:Q", stack=None, title="triplets"),
        color=alt.Color("pair:N", title=None, scale=alt.Scale(domain=["d(query, positive)", "d(query, negative)"],
                                                              range=["#2f9e44", "#e03131"]),
                        legend=alt.Legend(orient="top")),
        tooltip=["pair", alt.Tooltip("from:Q", format=".3f"), alt.Tooltip("to:Q", format=".3f"), "count"],
    ).properties(height=280)


def _history(runs: list[Run], names: dict[str, str], dataset: str) -> None:
    frames = []
    elsewhere = [run for run in runs if run.dataset != dataset]
    if elsewhere:
        # Another dataset's curves under this catalogue's name would read as this catalogue's learning.
        st.caption("; ".join(f"{names[run.key]} was trained on {run.dataset or 'other photos'}" for run in elsewhere)
                   + ": its training history is about that data, so it is not shown here.")
    for run in runs:
        if run.dataset != dataset:
            continue
        history = run.history()
        if history is not None and not history.empty:
            frames.append(history.assign(run=names[run.key]))
    if not frames:
        if len(elsewhere) < len(runs):
            st.caption(f"No {HISTORY_FILE} in these runs.")
        return
    history = pd.concat(frames, ignore_index=True)
    st.caption("Solid lines: training batches (with augmentation); dashed: the validation triplets after each epoch.")
    left, right = st.columns(2, gap="large")
    for column, metric, title in ((left, "loss", "Loss"), (right, "accuracy", "Triplet accuracy")):
        series = [c for c in (metric, f"val_{metric}") if c in history.columns]
        if not series:
            continue
        long = history.melt(id_vars=["run", "epoch"], value_vars=series, var_name="series", value_name="value")
        long["series"] = long["series"].map(lambda s: "validation" if s.startswith("val_") else "training")
        y = alt.Y("value:Q", title=None, axis=alt.Axis(format="%") if metric == "accuracy" else alt.Axis())
        chart = alt.Chart(long.dropna(subset=["value"])).mark_line(point=True).encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1), title="epoch"), y=y,
            color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top")),
            strokeDash=alt.StrokeDash("series:N", sort=["training", "validation"], legend=None),
            tooltip=["run", "series", "epoch", alt.Tooltip("value:Q", format=".3f")],
        )
        with column:
            st.markdown(f"**{title}**")
            st.altair_chart(chart.properties(height=300), width="stretch")
