"""The shipped default model for the sample dataset searches well out of the box."""

from pathlib import Path

import pytest

from mildnet.data.catalog import read_catalog
from mildnet.data.sample import generate_sample
from mildnet.data.triplets import read_triplets
from mildnet.evaluation import evaluate_triplets
from mildnet.training import load_run_model, read_run

PRETRAINED = Path(__file__).resolve().parents[1] / "mildnet" / "pretrained" / "sample"


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory):
    # The default parameters, as the app and the manifest generate it (deterministic by seed).
    return generate_sample(tmp_path_factory.mktemp("sample") / "sample")


def test_default_model_is_small_and_trained_from_scratch():
    run = read_run(PRETRAINED)
    assert run.config.weights is None, "the shipped model must not derive from third-party weights"
    assert run.config.dataset == "sample"
    assert (PRETRAINED / "best.keras").stat().st_size < 20 * 2**20


def test_default_model_triplet_accuracy_on_sample_test_split(default_sample):
    model = load_run_model(PRETRAINED)
    triplets = read_triplets(default_sample / "test.csv").triplets
    catalog = read_catalog(default_sample / "catalog.csv")
    image_size = read_run(PRETRAINED).config.image_size
    report = evaluate_triplets(model, default_sample, triplets, image_size=image_size, catalog=catalog)
    assert report.n_triplets > 300
    assert report.triplet_accuracy >= 0.90, report.format()
