"""``python -m mildnet train``: triplet training into a run directory (see ``mildnet.training``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time

from mildnet.cli.common import UsageError
from mildnet.cli.progress import ProgressBar
from mildnet.losses import LOSSES
from mildnet.optimizers import OPTIMIZERS
from mildnet.runs import BEST_MODEL, CONFIG_FILE, HISTORY_FILE, LAST_MODEL, METRICS_FILE

# Options that define a new run; with --resume the run's saved settings are used instead.
_RUN_OPTIONS = (
    "images", "triplets", "val_triplets", "dataset", "model", "weights", "image_size", "embedding_dim",
    "batch_size", "steps_per_epoch", "lr", "optimizer", "loss", "margin", "no_augment", "seed",
    "val_fraction", "init_from", "no_verify", "skip_missing", "freeze", "cache_gb",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an embedding model on triplets",
        description=f"Triplet training (MILDNet deep ranking). Writes {CONFIG_FILE}, {HISTORY_FILE}, {BEST_MODEL}, "
        f"{LAST_MODEL} and {METRICS_FILE} into the run folder (--out).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--images", metavar="DIR", help="image root the triplet paths are relative to")
    data.add_argument("--triplets", metavar="CSV", help="training triplets (query,positive,negative; no header)")
    data.add_argument("--val-triplets", metavar="CSV",
                      help="validation triplets (default: hold out --val-fraction of the training queries)")
    data.add_argument("--dataset", metavar="NAME", help="a data_manifest.csv entry instead of --images/--triplets")
    data.add_argument("--val-fraction", type=float, default=None, help="held-out share of queries (default 0.1)")
    data.add_argument("--skip-missing", action="store_true",
                      help="drop triplets whose images are missing or unreadable (default: fail)")
    data.add_argument("--no-verify", action="store_true", help="do not check every image's header first")

    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="NAME", help="zoo model (default: the zoo default)")
    model.add_argument("--weights", metavar="imagenet|none|PATH",
                       help="backbone weights (default: imagenet where the model has a pretrained backbone)")
    model.add_argument("--image-size", type=int, metavar="PX",
                       help="input size in pixels (default: the model's, 160 for squeezenet_colour, else 224)")
    model.add_argument("--embedding-dim", type=int, metavar="N", help="embedding size (default: the model's)")
    model.add_argument("--freeze", metavar="auto|none|LAYER",
                       help="freeze the layers up to this layer or block, e.g. fire3 (default auto: the model's "
                       "early layers when starting from pretrained weights: the whole backbone of the default "
                       "squeezenet_colour, "
                       "conv1..fire5 of mildnet_squeezenet)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, metavar="N", help="epochs (default 10; with --resume: new total)")
    opt.add_argument("--batch-size", type=int, metavar="N", help="triplets per step (default 32)")
    opt.add_argument("--steps-per-epoch", type=int, metavar="N", help="cap on steps per epoch")
    opt.add_argument("--lr", type=float, metavar="LR",
                     help="learning rate (default 0.001; 0.0001 for a flat folder's instance-level --dataset)")
    opt.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                     help="adam (default) or sgd (momentum 0.9, Nesterov)")
    opt.add_argument("--loss", choices=tuple(LOSSES), help="triplet loss (default hinge)")
    opt.add_argument("--margin", type=float, metavar="M", help="loss margin (default 0.3)")
    opt.add_argument("--no-augment", action="store_true",
                     help="no flips/zoom/shear/rotation (a model trained on cached features, like the default, "
                     "never augments)")
    opt.add_argument("--seed", type=int, help="random seed (default 0)")
    data.add_argument("--cache-gb", type=float, metavar="GB",
                      help="memory for decoded images, each decoded once (default 2; 0: decode every epoch)")

    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<model>-<time> in the data home, "
                     "where the app lists runs: $MILDNET_HOME or .mildnet)")
    run.add_argument("--init-from", metavar="RUN_DIR",
                     help="start from that run's best model (incremental training on new triplets)")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_train)


class ProgressPrinter:
    """CLI progress: a bar per epoch on stderr and one summary line per finished epoch."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.total_epochs = 0
        self.steps = 0
        self.bar: ProgressBar | None = None
        self._epoch = None

    def on_train_begin(self, total_epochs: int, steps_per_epoch: int) -> None:
        self.total_epochs, self.steps = total_epochs, steps_per_epoch

    def on_batch_end(self, epoch: int, step: int, logs: dict) -> None:
        if self._epoch != epoch:
            self._epoch = epoch
            # In a log, only a line every few seconds of a long epoch: the epoch's summary line follows.
            self.bar = ProgressBar(f"epoch {epoch}/{self.total_epochs}", unit="steps", stream=self.stream, edges=False)
            self._started = time.monotonic()
        self.bar.update(step, logs.get("steps", self.steps),
                        postfix=f"loss {logs['loss']:.4f} acc {logs['accuracy']:.3f}")

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        val = ""
        if logs.get("val_accuracy") == logs.get("val_accuracy") and logs.get("val_accuracy") is not None:
            val = f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.3f}"
        mark = "  *best" if logs.get("best") else ""
        self.stream.write(
            f"epoch {epoch}/{self.total_epochs}: loss {logs['loss']:.4f}  acc {logs['accuracy']:.3f}{val}"
            f"  ({logs['seconds']:.1f}s){mark}\n"
        )
        self.stream.flush()

    def on_train_end(self, result) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "ProgressPrinter":
        return self

    def __exit__(self, *exc) -> None:
        self.on_train_end(None)


def _config_from_args(args: argparse.Namespace):
    from mildnet.training import TrainConfig, default_learning_rate

    values = {
        "images": args.images or "",
        "triplets": args.triplets or "",
        "val_triplets": args.val_triplets,
        "dataset": args.dataset,
        "out": args.out,
        "model": args.model,
        "weights": args.weights if args.weights is not None else "auto",
        "image_size": args.image_size,
        "embedding_dim": args.embedding_dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "learning_rate": args.lr if args.lr is not None else default_learning_rate(args.dataset),
        "optimizer": args.optimizer,
        "loss": args.loss,
        "margin": args.margin,
        "augment": not args.no_augment,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "init_from": args.init_from,
        "verify_images": not args.no_verify,
        "skip_missing": args.skip_missing,
        "freeze": args.freeze,
        "cache_gb": args.cache_gb,
    }
    # Unset options keep TrainConfig's defaults (the reference's settings).
    return TrainConfig(**{k: v for k, v in values.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> int:
    if args.quiet:
        return _cmd_train(args)
    # The loop's own notes (image cache or streaming, frozen layers) belong in the CLI's output too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mildnet.training")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return _cmd_train(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _ctrl_c_stops(stop_event: threading.Event):
    """The first Ctrl-C (or SIGTERM) asks the loop to stop after the current step (the run keeps its finished
    epochs, its metrics and calibration, and can be resumed); a second one aborts at once. A KeyboardInterrupt raised
    straight into TensorFlow was lost now and then (Python drops one raised inside a ``__del__``), and killed
    the run's last writes when it was not."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return

    stopped_by: list[int] = []

    def on_sigint(signum, frame):
        if stop_event.is_set():
            raise KeyboardInterrupt
        stopped_by.append(int(signum))
        stop_event.set()
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\nstopping after this step ({again} again to abort)", file=sys.stderr, flush=True)

    # SIGTERM (docker stop, systemd) stops as cleanly as Ctrl-C: the run keeps what it finished.
    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped_by
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cmd_train(args: argparse.Namespace) -> int:
    stop_event = threading.Event()
    with _ctrl_c_stops(stop_event) as stopped_by:
        code = _train_or_resume(args, stop_event)
    return 128 + stopped_by[0] if stopped_by else code  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports


def _train_or_resume(args: argparse.Namespace, stop_event: threading.Event) -> int:
    printer = None if args.quiet else ProgressPrinter()
    with contextlib.ExitStack() as stack:
        if printer is not None:
            stack.enter_context(printer)  # an error mid-epoch starts its line after the bar, not on it
        return _run_training(args, stop_event, [printer] if printer else [])


def _run_training(args: argparse.Namespace, stop_event: threading.Event, callbacks: list) -> int:
    from mildnet.models.zoo import ModelArgumentError
    from mildnet.training import TrainConfigError, resume, train

    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        # `is`, not `in (None, False)`: 0 == False, so --seed 0 or --cache-gb 0 passed as "not given".
        given = [name for name in _RUN_OPTIONS if getattr(args, name) is not None and getattr(args, name) is not False]
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError("--resume continues with the run's saved settings; "
                             f"only --epochs may change ({options} given)")
        try:
            result = resume(args.out, callbacks, stop_event=stop_event, epochs=args.epochs)
        except TrainConfigError as exc:
            raise UsageError(str(exc)) from None
    else:
        if args.dataset and (args.images or args.triplets):
            raise UsageError("give either --dataset or --images/--triplets, not both")
        if not args.dataset and not (args.images and args.triplets):
            raise UsageError("give --images DIR and --triplets CSV (or --dataset NAME)")
        try:
            config = _config_from_args(args)
            if not args.dataset:  # a dataset's paths are only known once the manifest is read
                config.validate()
        except TrainConfigError as exc:
            raise UsageError(str(exc)) from None
        try:
            result = train(config, callbacks, stop_event=stop_event)
        # e.g. --out already holds a run, --init-from contradicts settings; an unknown --model or a size it cannot
        # take is one too (exit 2), and train finds it before it reads any data, as the other commands do.
        except (TrainConfigError, ModelArgumentError) as exc:
            raise UsageError(str(exc)) from None
    best = result.best or {}
    if result.best_epoch is None:
        summary = "no epoch finished"
    elif result.monitor == "val_accuracy":
        summary = f"best epoch {result.best_epoch}: val accuracy {100 * best['val_accuracy']:.1f}%"
    else:
        summary = f"best epoch {result.best_epoch}: loss {best['loss']:.4f} (no validation triplets)"
    print(f"{result.status}: {result.epochs_completed}/{result.epochs} epochs; {summary}")
    print(f"run folder: {result.run_dir}")
    if result.status == "stopped" and result.epochs_completed < result.epochs:
        print(f"continue it with: python -m mildnet train --resume --out {result.run_dir}")
    return 0
