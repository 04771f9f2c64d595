"""AU readers (OpenFace 2 CSVs, GANimation pickle) against AUs exported with ``--aus``."""
import logging
import pickle

import numpy as np
import pytest
import torch

from segexpr.data.aus import AUAnnotated, load_aus, read_ganimation_pkl, read_openface_csv, read_openface_dir
from segexpr.data.export import export_synthetic, load_ground_truth
from segexpr.data.labels import OPENFACE_AU_COLUMNS
from segexpr.data.rafd import RaFD, RaFDDataModule
from segexpr.data.validation import DatasetValidationError


@pytest.fixture(scope="module")
def rafd_openface(tmp_path_factory):
    root = tmp_path_factory.mktemp("rafd_of") / "RaFD"
    export_synthetic("rafd", root, count=3, size=32, seed=1, aus="openface")
    return root


@pytest.fixture(scope="module")
def rafd_ganimation(tmp_path_factory):
    root = tmp_path_factory.mktemp("rafd_gan") / "RaFD"
    export_synthetic("rafd", root, count=3, size=32, seed=1, aus="ganimation")
    return root


def _gt(root):
    gt = load_ground_truth(root)
    return dict(zip(gt["ids"], gt["aus"]))


def test_openface_dir_matches_ground_truth(rafd_openface):
    aus = read_openface_dir(rafd_openface / "openface")
    want = _gt(rafd_openface)
    assert set(aus) == set(want)
    for k, v in aus.items():
        assert v.dtype == np.float32 and v.shape == (17,)
        np.testing.assert_allclose(v, want[k], atol=1e-5)
    # the exported headers really have OpenFace's leading spaces
    first = next((rafd_openface / "openface").glob("*.csv")).read_text().splitlines()[0]
    assert ", AU01_r" in first


def test_ganimation_pickle_matches_ground_truth(rafd_ganimation):
    aus = read_ganimation_pkl(rafd_ganimation / "aus_openface.pkl")
    want = _gt(rafd_ganimation)
    assert set(aus) == set(want)
    for k in want:
        np.testing.assert_allclose(aus[k], want[k], atol=1e-6)
    assert load_aus(rafd_ganimation / "aus_openface.pkl").keys() == aus.keys()


def test_ganimation_bytes_keys_and_bad_values(tmp_path):
    p = tmp_path / "aus.pkl"
    with open(p, "wb") as f:
        pickle.dump({b"N_0001": np.full(17, 2.5), "N_0002": np.ones(5)}, f, protocol=2)
    with pytest.raises(DatasetValidationError, match="N_0002.*expected 17"):
        read_ganimation_pkl(p)
    with open(p, "wb") as f:
        pickle.dump({b"N_0001": np.full(17, 2.5)}, f, protocol=2)
    np.testing.assert_allclose(read_ganimation_pkl(p)["N_0001"], 0.5)


def _csv(path, header, rows):
    path.write_text("\n".join([", ".join(header)] + [", ".join(map(str, r)) for r in rows]) + "\n")


def test_openface_csv_success_column_order_and_errors(tmp_path):
    cols = list(reversed(OPENFACE_AU_COLUMNS))  # any column order: matched by name
    header = ["frame", " success", *(" " + c for c in cols)]
    vals = np.arange(17, dtype=float) / 4  # 0 .. 4
    _csv(tmp_path / "a.csv", header, [[1, 1, *vals[::-1]], [2, 0, *vals[::-1]], [3, 1, *np.full(17, 6.0)]])
    aus = read_openface_csv(tmp_path / "a.csv")
    assert aus.shape == (2, 17)  # the success == 0 row is dropped
    np.testing.assert_allclose(aus[0], vals / 5, atol=1e-7)
    np.testing.assert_allclose(aus[1], 1.0)  # intensities above 5 are clipped
    _csv(tmp_path / "b.csv", ["frame", "AU01_r"], [[1, 2.0]])
    with pytest.raises(DatasetValidationError, match="missing AU columns"):
        read_openface_csv(tmp_path / "b.csv")
    _csv(tmp_path / "c.csv", ["frame", *OPENFACE_AU_COLUMNS], [[1, *vals], [2, "x", *vals[1:]], [3, *vals[:5]]])
    with pytest.raises(DatasetValidationError) as err:
        read_openface_csv(tmp_path / "c.csv")
    assert "c.csv:3: non-numeric" in str(err.value) and "c.csv:4: truncated row" in str(err.value)


def test_au_annotated_attaches_by_id_and_reports_missing(rafd_openface, caplog):
    aus = read_openface_dir(rafd_openface / "openface")
    ds = RaFD(rafd_openface, "all", image_size=32)
    wrapped = AUAnnotated(ds, aus)
    item = wrapped[5]
    assert item["aus"].dtype == torch.float32 and item["aus"].shape == (17,)
    np.testing.assert_allclose(item["aus"].numpy(), _gt(rafd_openface)[ds.ids[5]], atol=1e-5)
    partial = {k: v for i, (k, v) in enumerate(sorted(aus.items())) if i % 2}
    with pytest.raises(DatasetValidationError) as err:
        AUAnnotated(ds, partial)
    missing = sorted(set(ds.ids) - set(partial))
    assert all(m in str(err.value) for m in missing) and f"{len(missing)} problem(s)" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="segexpr.data"):
        kept = AUAnnotated(ds, partial, skip_invalid=True)
    assert len(kept) == len(partial) and f"skipping {len(missing)} invalid entries (of {len(ds)}" in caplog.text


def test_datamodule_with_aus(rafd_ganimation):
    dm = RaFDDataModule(str(rafd_ganimation), image_size=32, batch_size=4, num_workers=2,
                        aus=str(rafd_ganimation / "aus_openface.pkl"), val_fraction=0.34, test_fraction=0.0)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["aus"].shape == (4, 17) and b["aus"].dtype == torch.float32
    assert float(b["aus"].min()) >= 0 and float(b["aus"].max()) <= 1


def test_datamodule_reads_an_au_source_once_for_all_splits(rafd_openface, monkeypatch):
    import segexpr.data.aus as aus_module

    calls = []
    real_load = aus_module.load_aus
    monkeypatch.setattr(aus_module, "load_aus", lambda source: calls.append(source) or real_load(source))
    dm = RaFDDataModule(str(rafd_openface), image_size=32, batch_size=2, aus=str(rafd_openface / "openface"),
                        val_fraction=0.34, test_fraction=0.34)
    dm.setup(None)  # train, val and test
    assert len(calls) == 1
    assert all(dm.dataset(split)[0]["aus"].shape == (17,) for split in ("train", "val", "test"))
