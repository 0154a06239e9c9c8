"""The sidebar every page shows: dataset and model selection, and launching/following a training job.

Selections live in plain session-state keys (``mn_dataset``, ``mn_runs``) rather than only in widget
keys: Streamlit drops a widget's state when a page without that widget runs, and each page renders its
own copy of the sidebar, so the plain keys are what carry the choice from page to page.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from mildnet import shop
from mildnet.errors import MildnetError
from mildnet.ui import jobs, owner, resources, settings, widgets
from mildnet.ui.runs import Run, describe_time

DATASET_KEY = "mn_dataset"
SELECTED_JOB_KEY = "mn_selected_job"  # id of the finished job whose run this session selected
RUNS_KEY = "mn_runs"  # dataset name -> selected run path
SEEN_JOB_KEY = "mn_seen_job"
SESSION_TOKEN_KEY = "mn_session_token"  # see session_token()
IMAGE_SIZES = (32, 48, 64, 96, 128, 160, 192, 224)


@dataclass
class Selection:
    dataset: str
    run: Run | None
    runs: list[Run]


@st.cache_resource(show_spinner=False)
def job_manager() -> jobs.JobManager:
    """One manager per server process: the training thread outlives script reruns and page switches."""
    return jobs.JobManager()


def render() -> Selection:
    with st.sidebar:
        names = resources.names()
        if not names:
            raise MildnetError("the dataset manifest lists no datasets")
        published = resources.published()
        is_owner = owner.is_owner()
        if published is not None and published.dataset in names and not is_owner:
            selection = _shopper_selection(published)
        else:
            selection = _owner_selection(names, published, is_owner)
        owner.sign_in_box()
        st.caption("MILDNet / RankNet deep ranking · [arXiv 1903.00905](https://arxiv.org/abs/1903.00905)")
    return selection


def _owner_selection(names: list[str], published, is_owner: bool) -> Selection:
    """Dataset and model pickers (the owner; or any visitor while nothing is published), the owner's
    publish button and training."""
    current = st.session_state.get(DATASET_KEY)
    if current not in names:
        gone = current
        current = published.dataset if published is not None and published.dataset in names else \
            settings.initial_dataset(names)
        st.session_state[DATASET_KEY] = current
        if gone is not None:
            # Removed meanwhile (`data remove`, another session): say so rather than switch silently.
            st.warning(f"The catalogue **{gone}** is no longer registered (it was removed); showing "
                       f"**{current}** instead.", icon=":material/info:")
    # The widget's own state is set from the plain key: it is dropped on page switches and a finished
    # training job or a test may change the choice from outside the widget.
    st.session_state["mn_dataset_widget"] = current
    st.selectbox(
        "Dataset", names, key="mn_dataset_widget",
        on_change=_copy, args=("mn_dataset_widget", DATASET_KEY),
        help="Datasets come from data_manifest.csv (MILDNET_MANIFEST overrides it).",
    )
    name = st.session_state[DATASET_KEY]
    runs = resources.runs(name)
    preferred = published.run if published is not None and published.dataset == name else None
    run = _run_selector(name, runs, preferred)
    if is_owner:
        _publish_box(name, run, published)
        _training_section(name, runs, run)
    return Selection(dataset=name, run=run, runs=runs)


def _shopper_selection(published) -> Selection:
    """What the owner published, with no pickers: every shopper gets the shop's catalogue and model."""
    runs = resources.runs(published.dataset)
    by_key = {r.key: r for r in runs}
    run = by_key.get(published.run) if published.run else None
    run = run or (runs[0] if runs else None)
    st.session_state[DATASET_KEY] = published.dataset
    st.markdown(f"**Catalogue:** {published.dataset}")
    return Selection(dataset=published.dataset, run=run, runs=runs)


def _publish_box(dataset: str, run: Run | None, published) -> None:
    if run is None:
        return
    if published is not None and published.dataset == dataset and published.run == run.key:
        st.caption(":material/public: Published: every visitor gets this catalogue and model.")
        return
    if st.button("Publish for every visitor", key="mn_publish", icon=":material/public:",
                 help="New visitors, and everyone after a reload or a restart, get this catalogue with this model."):
        shop.publish(dataset, run.path, datasets=resources.names(), path=shop.shop_file())
        resources.forget_published()
        st.rerun()


def _copy(widget_key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state[widget_key]


def _select_run(dataset: str, run_key: str | None) -> None:
    chosen = dict(st.session_state.get(RUNS_KEY, {}))
    chosen[dataset] = run_key
    st.session_state[RUNS_KEY] = chosen


def _run_selector(dataset: str, runs: list[Run], preferred: str | None = None) -> Run | None:
    if not runs:
        st.info("No trained model for this dataset yet: train one below.", icon=":material/model_training:")
        return None
    keys = [r.key for r in runs]
    chosen = st.session_state.get(RUNS_KEY, {}).get(dataset)
    if chosen not in keys:
        chosen = preferred if preferred in keys else keys[0]
        _select_run(dataset, chosen)
    by_key = {r.key: r for r in runs}
    widget_key = f"mn_run_widget_{dataset}"
    st.session_state[widget_key] = chosen
    st.selectbox(
        "Model", keys, key=widget_key,
        format_func=lambda k: by_key[k].label,
        on_change=lambda: _select_run(dataset, st.session_state[widget_key]),
        help="The shipped real-photo model (the default), the dataset's own shipped model if any, then your "
             "training runs (newest first).",
    )
    run = by_key[st.session_state[RUNS_KEY][dataset]]
    details = [run.model_name or "", f"{run.image_size}px" if run.image_size else "", describe_time(run)]
    st.caption(" · ".join(d for d in details if d) or run.name)
    return run


# --- training ------------------------------------------------------------------------------------


def _training_section(dataset: str, runs: list[Run], active: Run | None) -> None:
    manager = job_manager()
    busy = manager.busy()
    with st.expander("Train a model", icon=":material/model_training:", expanded=busy):
        if busy:
            st.caption("One training job runs at a time; follow it below.")
        else:
            _training_form(dataset, runs, active, manager)
    # Refresh every second only while a job runs; otherwise the panel is static and costs nothing.
    job = manager.current()
    running = job is not None and job.thread.is_alive()
    st.fragment(_job_panel, run_every=1.0 if running else None)(manager)


def _training_form(dataset: str, runs: list[Run], active: Run | None, manager: jobs.JobManager) -> None:
    from mildnet.models import MODEL_NAMES, describe_model
    from mildnet.training import TrainConfig, default_learning_rate

    with st.form("mn_train_form", border=False):
        start_options = ["new"] + [r.key for r in runs]
        labels = {"new": "New model (base training)", **{r.key: f"Continue: {r.label}" for r in runs}}
        # Fine-tuning the shipped real-photo model learns a catalogue in seconds to minutes on a CPU and
        # starts from a model that already searches real photos well: the sensible first training.
        real = next((i for i, r in enumerate(runs, start=1) if r.is_real_photo_default), 0)
        start = st.selectbox("Start from", start_options, index=real, format_func=labels.get, key="mn_train_start",
                             help="Incremental training starts from an earlier run's best model "
                                  "(same architecture and image size).")
        default_model = (active.model_name if active and active.model_name in MODEL_NAMES else "tiny_cnn")
        # Inside a form nothing reruns until submit, so every model is described in the help, not below it.
        model_help = "Ignored when continuing a run.\n\n" + "\n".join(
            f"- **{name}**: {describe_model(name)}" for name in MODEL_NAMES)
        model_name = st.selectbox("Model", MODEL_NAMES, index=MODEL_NAMES.index(default_model),
                                  key="mn_train_model", help=model_help)
        # Random init first: it works offline with every model. ImageNet weights: SqueezeNet's are read from
        # the shipped real-photo model (no download); the VGG/MobileNet backbones download once.
        weights = st.selectbox("Backbone weights", ["none", "auto"], key="mn_train_weights",
                               format_func={"auto": "ImageNet where available (VGG/MobileNet download once)",
                                            "none": "Random init (works offline)"}.get)
        default_size = active.image_size if active and active.image_size in IMAGE_SIZES else 64
        image_size = st.select_slider("Image size (px)", IMAGE_SIZES, value=default_size, key="mn_train_size")
        c1, c2 = st.columns(2)
        defaults = TrainConfig()
        epochs = c1.number_input("Epochs", 1, 500, defaults.epochs, key="mn_train_epochs")
        batch_size = c2.number_input("Batch size", 1, 512, defaults.batch_size, key="mn_train_batch")
        # A flat folder's instance-level triplets want a gentler step (training.config.INSTANCE_LEARNING_RATE); the
        # widget is keyed by dataset so that switching datasets offers each its own default.
        learning_rate = st.number_input("Learning rate", 1e-6, 1.0, default_learning_rate(dataset), format="%.5f",
                                        step=1e-4, key=f"mn_train_lr:{dataset}",
                                        help="A flat folder (no labels) trains at 0.0001: its instance-level "
                                             "triplets are learnt within an epoch, and a larger step forgets what "
                                             "the starting model knew about type and colour.")
        submitted = st.form_submit_button("Start training", icon=":material/play_arrow:", type="primary",
                                          width="stretch")
    if submitted:
        try:
            launch(manager, dataset, model_name=model_name, weights=weights, image_size=int(image_size),
                   epochs=int(epochs), batch_size=int(batch_size), learning_rate=float(learning_rate),
                   init_from=None if start == "new" else start, owner=session_token())
        except MildnetError as exc:
            st.error(str(exc), icon=":material/error:")
        else:
            st.rerun()


def session_token() -> str:
    """A random id for this browser session, kept in its session state (Streamlit's own session id is internal)."""
    token = st.session_state.get(SESSION_TOKEN_KEY)
    if token is None:
        token = st.session_state[SESSION_TOKEN_KEY] = uuid.uuid4().hex
    return token


def launch(manager: jobs.JobManager, dataset: str, *, model_name: str, weights: str, image_size: int,
           epochs: int, batch_size: int, learning_rate: float, init_from: str | None,
           steps_per_epoch: int | None = None, owner: str | None = None) -> jobs.Job:
    """Validates the settings in the script thread (errors show at once) and starts the worker thread.
    ``owner`` (:func:`session_token`) is the session that switches to the new run when it finishes."""
    from mildnet import training
    from mildnet.runs import new_run_dir

    ds = resources.dataset(dataset)
    val = ds.split("val").triplets if "val" in ds.split_names else None
    out = new_run_dir(settings.runs_dir(), model_name if not init_from else "continued")
    config = training.TrainConfig(
        images=str(ds.image_root),
        triplets=str(ds.split("train").triplets),
        val_triplets=str(val) if val else None,
        dataset=dataset,
        out=str(out),
        model=None if init_from else model_name,
        weights=None if init_from else weights,
        image_size=None if init_from else image_size,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        steps_per_epoch=steps_per_epoch,
        init_from=init_from,
        skip_missing=True,
    )
    config.validate()
    label = f"{'continue ' + Path(init_from).name if init_from else model_name} · {epochs} epoch{'s' * (epochs != 1)}"

    def work(callbacks, stop_event):
        return training.train(config, callbacks=callbacks, stop_event=stop_event)

    return manager.start(label, work, run_dir=str(out), owner=owner)


def _job_panel(manager: jobs.JobManager) -> None:
    # A fragment rerun executes only this function, outside the page's error boundary: it needs its own.
    with widgets.error_boundary():
        _job_panel_body(manager)


def _job_panel_body(manager: jobs.JobManager) -> None:
    job = manager.current()
    if job is None:
        return
    s = job.snapshot()
    if s.active:
        _running_panel(job, s)
        return
    if st.session_state.get(SEEN_JOB_KEY) != s.job_id:
        # The job just ended: list the new run and, in the session that started it, select it; then redraw the
        # whole page once. Every other session (a shopper searching, a tab opened later) keeps its model.
        st.session_state[SEEN_JOB_KEY] = s.job_id
        resources.forget_runs()
        if s.state != jobs.FAILED and s.run_dir and s.owner == session_token():
            dataset = st.session_state.get(DATASET_KEY)
            finished = Path(s.run_dir).resolve()
            match = next((r for r in resources.runs(dataset or None) if r.path.resolve() == finished), None)
            if dataset and match is not None:
                _select_run(dataset, match.key)
                st.session_state[SELECTED_JOB_KEY] = s.job_id
        st.rerun(scope="app")
    _finished_panel(s, selected=st.session_state.get(SELECTED_JOB_KEY) == s.job_id)


def _running_panel(job: jobs.Job, s: jobs.JobState) -> None:
    with st.container(border=True, key="mn_job_panel"):
        st.markdown(f"**Training** · {s.label}")
        if s.phase == "starting":
            st.progress(0.0, text="Preparing data and model…")
        else:
            text = f"Epoch {min(s.epoch, s.total_epochs)}/{s.total_epochs} · step {s.step}/{s.steps_per_epoch}"
            st.progress(s.fraction, text=text)
            c1, c2 = st.columns(2)
            c1.metric("Loss", f"{s.running.get('loss', float('nan')):.3f}")
            c2.metric("Accuracy", f"{s.running.get('accuracy', float('nan')):.0%}")
            if s.history:
                last = s.history[-1]
                val = last.get("val_accuracy")
                st.caption(f"Epoch {last['epoch']}: val accuracy "
                           f"{'n/a' if val is None or val != val else f'{val:.1%}'}")
        st.caption(f"Elapsed {_duration(s.elapsed)}")
        stopping = job.stop_event.is_set()
        if st.button("Stopping…" if stopping else "Stop training", icon=":material/stop:", disabled=stopping,
                     width="stretch", key="mn_stop_training"):
            job.stop()
            st.rerun(scope="fragment")


def _finished_panel(s: jobs.JobState, selected: bool) -> None:
    where = s.run_dir.rsplit("/", 1)[-1] if s.run_dir else ""
    if s.state == jobs.COMPLETED:
        # Not selected when the user switched to a dataset the run was not trained on (or another session).
        outcome = "is now selected" if selected else "is in the model list of the dataset it was trained on"
        st.success(f"Training finished in {_duration(s.elapsed)}: {where} {outcome}.",
                   icon=":material/check_circle:")
    elif s.state == jobs.STOPPED:
        done = len(s.history)
        st.warning(f"Training stopped after {done} epoch{'s' * (done != 1)}"
                   + (f"; {where} keeps the best epoch." if done else "."), icon=":material/stop_circle:")
    else:
        st.error(f"Training failed: {s.error}", icon=":material/error:")


def _duration(seconds: float) -> str:
    return str(_dt.timedelta(seconds=int(seconds)))
