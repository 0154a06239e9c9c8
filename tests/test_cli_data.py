import pandas as pd

from mildnet.cli import main
from mildnet.data.triplets import read_triplets


def test_triplets_then_check_is_clean(labelled_folder, tmp_path, capsys):
    out = tmp_path / "triplets"
    assert main(["data", "triplets", "--images", str(labelled_folder), "--out", str(out), "--seed", "3"]) == 0
    catalog = pd.read_csv(out / "catalog.csv")
    assert len(catalog) == 12
    files = [str(out / f"{split}.csv") for split in ("train", "val", "test") if (out / f"{split}.csv").exists()]
    assert sum(len(read_triplets(f).triplets) for f in files) > 0
    assert main(["data", "check", "--images", str(labelled_folder), "--triplets", *files]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_check_with_problems_exits_1(labelled_folder, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("red/red_0.jpg,red/red_1.jpg,blue/gone.jpg\nonly,two\n")
    assert main(["data", "check", "--images", str(labelled_folder), "--triplets", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "missing: 1" in out and "malformed: 1" in out


def test_bad_arguments_exit_2_without_traceback(tmp_path, capsys):
    assert main(["data", "check", "--images", str(tmp_path)]) == 2
    assert main(["data", "triplets", "--images", str(tmp_path), "--out", str(tmp_path), "--per-query", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--per-query must be at least 1" in err


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "check", "--images", str(tmp_path), "--triplets", str(tmp_path / "none.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: triplet file not found") and "\n" not in err
    assert main(["data", "triplets", "--images", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: image folder not found")


def test_sample_bad_sizes_exit_2_without_traceback(tmp_path, capsys):
    assert main(["data", "sample", "--out", str(tmp_path / "s"), "--products", "0"]) == 2
    assert main(["data", "sample", "--out", str(tmp_path / "s"), "--size", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 2 and not (tmp_path / "s").exists()


def test_triplets_out_is_a_file_or_labels_empty_is_one_line(labelled_folder, tmp_path, capsys):
    a_file = tmp_path / "taken.csv"
    a_file.write_text("x\n")
    assert main(["data", "triplets", "--images", str(labelled_folder), "--out", str(a_file)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = tmp_path / "labels.csv"
    empty.write_text("")
    assert main(["data", "triplets", "--images", str(labelled_folder), "--labels", str(empty),
                 "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: catalog") and "empty" in err and "\n" not in err
