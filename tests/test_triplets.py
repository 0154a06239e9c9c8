import time

import pandas as pd
import pytest

from mildnet.data.triplets import (
    check_triplets,
    find_leaks,
    parse_triplets,
    read_triplets,
    usable_triplets,
    write_triplets,
)
from mildnet.errors import DataError


def _write(path, text):
    path.write_text(text)
    return path


def test_parse_reports_bad_rows_and_keeps_good_ones():
    text = "\n".join(
        [
            "a.jpg,b.jpg,c.jpg",  # good
            "a.jpg,b.jpg",  # malformed
            "a.jpg,,c.jpg",  # empty
            "../etc/passwd,b.jpg,c.jpg",  # unsafe
            "/abs/a.jpg,b.jpg,c.jpg",  # unsafe
            "a.jpg,b.jpg,c.jpg",  # duplicate of line 1
            "a.jpg,b.jpg,a.jpg",  # degenerate
            "",
            "d.jpg,e.jpg,f.jpg",  # good
        ]
    )
    parsed = parse_triplets(text, name="t.csv")
    assert parsed.triplets[["query", "positive", "negative"]].values.tolist() == [
        ["a.jpg", "b.jpg", "c.jpg"],
        ["d.jpg", "e.jpg", "f.jpg"],
    ]
    assert parsed.triplets["line"].tolist() == [1, 9]
    kinds = [(p.kind, p.line) for p in parsed.problems]
    assert kinds == [("malformed", 2), ("empty", 3), ("unsafe", 4), ("unsafe", 5), ("duplicate", 6), ("degenerate", 7)]
    assert parsed.n_rows == 8


def test_read_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_triplets(tmp_path / "missing.csv")


def test_write_read_round_trip_has_no_header(tmp_path):
    frame = pd.DataFrame({"query": ["q.jpg"], "positive": ["p.jpg"], "negative": ["n.jpg"]})
    path = write_triplets(tmp_path / "out" / "t.csv", frame)
    assert path.read_text() == "q.jpg,p.jpg,n.jpg\n"
    assert read_triplets(path).triplets["query"].tolist() == ["q.jpg"]


def test_check_finds_missing_and_unreadable_images(labelled_folder, tmp_path):
    (labelled_folder / "red" / "broken.jpg").write_bytes(b"not really a jpeg")
    triplets = _write(
        tmp_path / "train.csv",
        "red/red_0.jpg,red/red_1.jpg,blue/blue_0.jpg\n"
        "red/red_0.jpg,red/missing.jpg,blue/blue_0.jpg\n"
        "red/broken.jpg,red/red_1.jpg,blue/blue_1.jpg\n",
    )
    report = check_triplets(labelled_folder, [triplets])
    assert not report.ok
    assert report.counts() == {"missing": 1, "unreadable": 1}
    assert report.bad_images == {"red/missing.jpg", "red/broken.jpg"}
    usable = usable_triplets(report)[str(triplets)]
    assert usable["query"].tolist() == ["red/red_0.jpg"]
    text = report.format()
    assert "red/missing.jpg" in text and "unreadable: 1" in text


def test_clean_files_are_ok(labelled_folder, tmp_path):
    triplets = _write(tmp_path / "train.csv", "red/red_0.jpg,red/red_1.jpg,blue/blue_0.jpg\n")
    report = check_triplets(labelled_folder, [triplets])
    assert report.ok, report.format()
    assert "no problems found" in report.format()


def test_leaks_between_splits():
    train = pd.DataFrame({"query": ["a", "b"], "positive": ["p", "p"], "negative": ["n", "n"]})
    val = pd.DataFrame({"query": ["a", "c", "d"], "positive": ["p", "p", "p"], "negative": ["n", "x", "n"]})
    leaks = find_leaks({"train": train, "val": val})
    assert len(leaks) == 1
    leak = leaks[0]
    assert (leak.split_a, leak.split_b, leak.shared_triplets, leak.shared_queries) == ("train", "val", 1, 1)
    unrelated = pd.DataFrame({"query": ["z"], "positive": ["p"], "negative": ["n"]})
    assert find_leaks({"train": train, "test": unrelated}) == []


def test_real_mildnet_csvs_report_test_in_val_and_missing_images(shared_dir):
    folder = shared_dir / "data" / "mildnet-csv"
    files = [folder / "tops_train_shuffle.csv", folder / "tops_val_full.csv", folder / "tops_test.csv"]
    start = time.perf_counter()
    report = check_triplets(folder / "images", files)
    elapsed = time.perf_counter() - start
    assert elapsed < 15, f"check took {elapsed:.1f}s on ~100k rows"
    assert [f.n_rows for f in report.files] == [70748, 24163, 7000]
    test_leaks = [leak for leak in report.leaks if leak.split_a == "tops_test" and leak.split_b == "tops_val_full"]
    assert test_leaks and test_leaks[0].shared_triplets == 7000
    assert "all 7000 triplets of tops_test also appear in tops_val_full" in report.format()
    assert "all 90112 referenced images are missing" in report.format()


def test_header_row_is_skipped_not_reported_as_missing_images():
    from mildnet.data.triplets import parse_triplets

    parsed = parse_triplets("Query,Positive,Negative\r\na.jpg,b.jpg,c.jpg\r\n")
    assert parsed.problems == [] and parsed.n_rows == 1
    assert list(parsed.triplets["query"]) == ["a.jpg"] and parsed.triplets["line"].tolist() == [2]
    # Only the first row can be a header; later it is a (degenerate-looking) triplet row like any other.
    later = parse_triplets("a.jpg,b.jpg,c.jpg\nquery,positive,negative\n")
    assert len(later.triplets) == 2


def test_backslash_names_are_checked_as_the_files_training_opens(labelled_folder, tmp_path):
    triplets = _write(tmp_path / "t.csv",
                      "red\\red_0.jpg,red\\red_1.jpg,blue\\blue_0.jpg\nred\\..\\..\\x.jpg,a.jpg,b.jpg\n")
    report = check_triplets(labelled_folder, [triplets])
    frame = report.files[0].triplets
    assert frame[["query", "positive", "negative"]].values.tolist() == [
        ["red/red_0.jpg", "red/red_1.jpg", "blue/blue_0.jpg"]]
    assert report.counts() == {"unsafe": 1}
    assert all((labelled_folder / name).is_file() for name in report.files[0].images)
