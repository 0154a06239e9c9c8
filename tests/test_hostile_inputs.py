"""Regressions for defects a hostile probe found (issue 11): non-regular files, CSV fields over the csv
module's limit, images the header check passed but the loader refused, half-written run folders, and exit
codes of bad model arguments."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mildnet.cli import main
from mildnet.data import manifest
from mildnet.data.images import MAX_FILE_BYTES, load_image, verify_image
from mildnet.data.triplets import check_triplets, read_triplets
from mildnet.errors import DataError, ImageError
from mildnet.training import TrainConfig, train


def _jpeg(path: Path, colour=(200, 30, 30), size=32) -> Path:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i, colour in enumerate([(200, 30, 30)] * 3 + [(30, 30, 200)] * 3):
        _jpeg(root / f"{'rb'[i // 3]}{i}.jpg", colour)
    return root


def _within(seconds: float, fn, *args):
    """fn(*args) in a thread; fails (instead of hanging the suite) if it does not return in time."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the test thread below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} did not return within {seconds} s (blocked on a pipe?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


# --- named pipes and other non-regular files never block ------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_a_named_pipe_is_refused_not_opened(folder, tmp_path, capsys):
    os.mkfifo(folder / "f.jpg")
    triplets = _write(tmp_path / "t.csv", ["r0.jpg,r1.jpg,f.jpg", "r0.jpg,r2.jpg,b3.jpg"])
    assert "not a regular file" in _within(10, verify_image, folder / "f.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        _within(10, load_image, folder / "f.jpg")
    report = _within(20, check_triplets, folder, [triplets])
    assert report.bad_images == {"f.jpg"}
    assert _within(20, main, ["data", "check", "--images", str(folder), "--triplets", str(triplets)]) == 1
    assert "not a regular file" in capsys.readouterr().out
    config = TrainConfig(images=str(folder), triplets=str(triplets), out=str(tmp_path / "run"), model="tiny_cnn",
                         image_size=16, epochs=1, batch_size=2, val_fraction=0.0, skip_missing=True)
    result = _within(120, train, config)
    assert result.n_train_triplets == 1  # the pipe's triplet dropped, the other trained


# --- CSV fields over the csv module's limit --------------------------------------------------------------


def test_a_csv_field_over_the_limit_is_one_bad_row(folder, tmp_path, capsys):
    huge = "x" * 200_000
    triplets = _write(tmp_path / "t.csv", ["r0.jpg,r1.jpg,b3.jpg", f"{huge},r1.jpg,b3.jpg", "r0.jpg,r2.jpg,b4.jpg"])
    parsed = read_triplets(triplets)
    assert len(parsed.triplets) == 2
    assert [(p.kind, p.line) for p in parsed.problems] == [("malformed", 2)]
    assert "field limit" in parsed.problems[0].detail
    assert main(["data", "check", "--images", str(folder), "--triplets", str(triplets)]) == 1
    out, err = capsys.readouterr()
    assert "malformed: 1" in out and "Traceback" not in out + err


def test_a_manifest_field_over_the_limit_is_a_one_line_error(tmp_path):
    path = _write(tmp_path / "manifest.csv", ["dataset,split,triplets,image_root,source",
                                              f"mine,train,{'x' * 200_000}.csv,images,local"])
    with pytest.raises(DataError, match="unreadable CSV"):
        manifest.load_manifest(path)


# --- the check uses the loader's limits ------------------------------------------------------------------


def _hostile_images(root: Path) -> dict[str, Path]:
    truncated = root / "truncated.jpg"
    data = _jpeg(root / "whole.jpg", size=128).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    oversized = root / "oversized.jpg"
    oversized.write_bytes(data + b"\0" * (MAX_FILE_BYTES + 1 - len(data)))
    huge = root / "huge.png"
    Image.new("1", (8000, 7000)).save(huge)  # 56 Mpx, a few kB on disk
    return {"truncated": truncated, "oversized": oversized, "huge": huge}


@pytest.mark.parametrize("kind", ["truncated", "oversized", "huge"])
def test_check_refuses_exactly_what_the_loader_refuses(tmp_path, kind):
    path = _hostile_images(tmp_path)[kind]
    with pytest.raises(ImageError) as refused:
        load_image(path)
    assert verify_image(path) == str(refused.value)


def test_training_skips_or_refuses_a_truncated_image_and_leaves_no_half_run(folder, tmp_path):
    data = (folder / "b5.jpg").read_bytes()
    (folder / "b5.jpg").write_bytes(data[: len(data) // 2])
    triplets = _write(tmp_path / "t.csv", ["r0.jpg,r1.jpg,b5.jpg", "r0.jpg,r2.jpg,b3.jpg", "b3.jpg,b4.jpg,r1.jpg"])
    base = dict(images=str(folder), triplets=str(triplets), model="tiny_cnn", image_size=16, epochs=1,
                batch_size=2, val_fraction=0.0)
    with pytest.raises(DataError, match="b5.jpg"):
        train(TrainConfig(out=str(tmp_path / "strict"), **base))
    assert not (tmp_path / "strict").exists()
    result = train(TrainConfig(out=str(tmp_path / "skip"), skip_missing=True, **base))
    assert result.n_train_triplets == 2
    # Without the pre-check the decoder meets the image mid-epoch: the run fails and leaves no folder
    # that would block the same command ("already holds a training run").
    with pytest.raises(DataError, match="b5.jpg"):
        train(TrainConfig(out=str(tmp_path / "late"), verify_images=False, **base))
    assert not (tmp_path / "late").exists()


# --- bad model arguments are usage errors everywhere --------------------------------------------------------


@pytest.mark.parametrize("bad", [["--model", "nosuch"], ["--model", "tiny_cnn", "--image-size", "4"],
                                 ["--model", "tiny_cnn", "--image-size", "0"],
                                 ["--model", "tiny_cnn", "--embedding-dim", "0"]])
def test_bad_model_arguments_exit_2_in_every_command(folder, tmp_path, capsys, bad):
    triplets = _write(tmp_path / "t.csv", ["r0.jpg,r1.jpg,b3.jpg"])
    commands = [["embed", "--images", str(folder), "--store", str(tmp_path / "store")],
                ["search", "--image", str(folder / "r0.jpg"), "--store", str(tmp_path / "store")],
                ["evaluate", "--images", str(folder), "--triplets", str(triplets), "--no-baselines"]]
    for command in commands:
        assert main(command + bad) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1, err


def test_an_empty_triplet_file_fails_the_check(folder, tmp_path, capsys):
    empty = _write(tmp_path / "empty.csv", [""])
    assert main(["data", "check", "--images", str(folder), "--triplets", str(empty)]) == 1
    assert "no triplets: 1" in capsys.readouterr().out


# --- archives: bombs are refused, extracted folders get normal modes ----------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_bombs_are_refused_and_leave_nothing(tmp_path, kind):
    import tarfile
    import zipfile

    from mildnet.data.fetch import extract

    zeros = tmp_path / "zeros.csv"
    with open(zeros, "wb") as f:
        f.truncate(200 << 20)  # 200 MB of zeros: ~200 kB compressed
    archive = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(zeros, "data/zeros.csv")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(zeros, "data/zeros.csv")
    zeros.unlink()
    with pytest.raises(DataError, match="zip bomb"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # no staging folder left either


def test_an_extracted_dataset_folder_has_normal_modes(tmp_path, folder):
    import stat
    import zipfile

    from mildnet.data.fetch import extract

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, f"photos/{path.name}")
    out = extract(archive, tmp_path / "out")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert sorted(p.name for p in (out / "photos").iterdir()) == sorted(p.name for p in folder.iterdir())


# --- stores: vanished Redis keys, malformed URLs, a .npy header claiming a huge shape -----------------------


def _embedded(capsys, folder, store):
    assert main(["embed", "--model", "tiny_cnn", "--image-size", "16", "--images", str(folder), "--store", store]) == 0
    capsys.readouterr()


def _search(store, folder):
    return ["search", "--model", "tiny_cnn", "--image-size", "16", "--image", str(folder / "r0.jpg"),
            "--store", store]


def test_redis_keys_gone_under_the_pointer_say_what_happened(capsys, folder, redis_url):
    import redis

    _embedded(capsys, folder, redis_url)
    client = redis.Redis.from_url(redis_url)
    meta_keys = [k for k in client.keys("*") if k.endswith(b":meta")]
    assert meta_keys
    client.delete(*meta_keys)  # what an eviction under maxmemory does to a set
    assert main(_search(redis_url, folder)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gone from Redis" in err and "--rebuild" in err


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:notaport/0", "redis://[::1/0", "redis://:s3cret@[::1/0",
                                 "redis://localhost:6379/x", "http://example.com/store"])
def test_malformed_store_urls_are_usage_errors_with_the_password_masked(capsys, folder, url):
    for command in (["embed", "--model", "tiny_cnn", "--images", str(folder), "--store", url],
                    ["search", "--model", "tiny_cnn", "--image", str(folder / "r0.jpg"), "--store", url,
                     "--fallback-local", str(folder.parent / "fallback")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and "s3cret" not in err, err
    assert not (folder.parent / "fallback").exists()  # a typo is not an outage to fall back from


def test_a_npy_header_claiming_a_huge_shape_is_a_one_line_error(capsys, folder, tmp_path):
    store = tmp_path / "store"
    _embedded(capsys, folder, str(store))
    (matrix,) = store.rglob("vectors.npy")
    small = np.load(matrix)
    with open(matrix, "wb") as f:  # the same bytes behind a header that claims 4e12 rows
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (4_000_000_000_000, small.shape[1])})
        f.write(small.astype("<f4").tobytes())
    assert main(_search(str(store), folder)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt embedding matrix" in err, err
