"""The CLI as a user runs it: a separate process, errors as exactly one line on stderr."""

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mildnet", *args], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_model_command_error_is_one_line_without_tensorflow_chatter(tmp_path):
    result = _run("evaluate", "--run", str(tmp_path / "no-such-run"), "--dataset", "sample")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'no-such-run'} is not a training run directory (no config.json)"]


def test_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("data", "train", "evaluate", "embed", "search"):
        assert command in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(2, 130), (15, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_training_cleanly_and_the_run_can_be_resumed(tmp_path, signum, code):
    # SIGTERM is what `docker stop` and systemd send (issue 18 F8: it ended the run with rc 143 and no message).
    import time

    from mildnet.data.sample import generate_sample

    sample = generate_sample(tmp_path / "sample", products=12, size=48, wild_per_product=2, seed=0)
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "mildnet", "train", "--images", str(sample), "--triplets", str(sample / "train.csv"),
         "--val-triplets", str(sample / "val.csv"), "--model", "tiny_cnn", "--weights", "none", "--image-size",
         "32", "--epochs", "1000", "--batch-size", "4", "--out", str(run)],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "history.csv").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)  # SIGINT: what Ctrl-C in the terminal does
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert "stopping after this step" in err and "Traceback" not in err
    assert out.splitlines()[-3].startswith("stopped: ") and "--resume --out" in out.splitlines()[-1]
    # The run ended properly: metrics and calibration written, and it resumes from its last finished epoch.
    assert (run / "metrics.json").is_file() and (run / "calibration.json").is_file()
    import json

    done = json.loads((run / "metrics.json").read_text())["epochs_completed"]
    resumed = _run("train", "--resume", "--out", str(run), "--epochs", str(done + 1), "--quiet")
    assert resumed.returncode == 0 and f"completed: {done + 1}/{done + 1} epochs" in resumed.stdout, resumed.stderr


def test_an_error_during_an_epoch_starts_on_its_own_line():
    # Issue 18 F21: a disk-full error during training was printed at the end of the progress bar's line.
    import io

    from mildnet.cli.train import ProgressPrinter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with pytest.raises(OSError):
        with ProgressPrinter(stream) as printer:
            printer.on_train_begin(3, 10)
            printer.on_batch_end(1, 4, {"loss": 0.5, "accuracy": 0.75})
            raise OSError(28, "No space left on device")
    assert stream.getvalue().startswith("\repoch 1/3") and "4/10" in stream.getvalue()
    assert stream.getvalue().endswith("\n")


def test_progress_in_a_log_is_a_few_plain_lines_with_rate_and_eta(monkeypatch):
    # Issue 19 (8): without a terminal the hand-written bar wrote every redraw into the log (~100 per phase).
    import io

    from mildnet.cli import progress

    log = io.StringIO()
    clock = iter(range(100_000))  # a tenth of a second each time the bar reads the clock: about a minute in all
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock) / 10)
    with progress.ProgressBar("embedding", stream=log) as bar:
        for done in range(0, 1716, 5):
            bar.update(done, 1715, "images")
        bar.update(1715, 1715, "images")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 3 <= len(lines) <= 12, lines
    assert lines[0].startswith("embedding images: 0/1715 (0%)") and lines[-1].startswith("embedding images: 1715/1715")
    assert "it/s" in lines[1] and "<" in lines[1]  # a rate and an ETA
