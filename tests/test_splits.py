from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deri_sweep.data.splits import (
    SplitError,
    default_split,
    fold_split,
    random_split,
    read_split_files,
    training_subset,
)


def _index(n: int = 600, subjects: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {"record_id": [f"r{i}" for i in range(n)], "subject_id": [f"s{v}" for v in rng.integers(0, subjects, n)]}
    )


def test_random_split_is_deterministic_grouped_and_7_1_2():
    index = _index()
    a, b = random_split(index, seed=5), random_split(index, seed=5)
    assert a.tolist() == b.tolist()
    assert random_split(index, seed=6).tolist() != a.tolist()
    per_subject = index.assign(split=a).groupby("subject_id")["split"].nunique()
    assert per_subject.max() == 1  # no subject spans two splits
    counts = index.assign(split=a).groupby("split")["subject_id"].nunique()
    n = index["subject_id"].nunique()
    assert (counts["train"], counts["val"], counts["test"]) == (
        round(0.7 * n),
        round(0.1 * n),
        n - round(0.7 * n) - round(0.1 * n),
    )


def test_records_without_subject_are_split_individually():
    index = pd.DataFrame({"record_id": [f"A{i:04d}" for i in range(1000)], "subject_id": [None] * 1000})
    split = random_split(index, seed=0).value_counts()
    assert split.to_dict() == {"train": 700, "test": 200, "val": 100}


def test_mimic_val_is_two_percent_of_subjects():
    index = _index(5000, 1000)
    split = default_split("mimic", index, seed=0)
    val_subjects = index.loc[split == "val", "subject_id"].nunique()
    assert val_subjects == 20 and set(split) == {"train", "val"}


def test_ptbxl_folds():
    folds = pd.Series([1, 8, 9, 10, 3, None])
    assert fold_split(folds).tolist() == ["train", "train", "val", "test", "train", "unused"]


def test_training_fractions_are_nested_and_seeded():
    index = _index(1000).assign(split=["train"] * 800 + ["val"] * 200)
    one, ten, full = (training_subset(index, f, seed=1) for f in (0.01, 0.1, 1.0))
    assert (len(one), len(ten), len(full)) == (8, 80, 800)
    assert set(one) <= set(ten) <= set(full) and full.max() < 800
    assert training_subset(index, 0.1, seed=1).tolist() == ten.tolist()
    assert training_subset(index, 0.1, seed=2).tolist() != ten.tolist()
    with pytest.raises(SplitError, match=r"in \(0, 1\]"):
        training_subset(index, 0.0, seed=1)


def test_split_files_align_labels_by_name(tmp_path):
    pd.DataFrame({"ecg_id": [1, 2, 3], "NORM": [1, 0, 0], "MI": [0, 1, 1]}).to_csv(tmp_path / "train.csv", index=False)
    # val lists the same classes in another order: must be aligned by name, not position
    pd.DataFrame({"ecg_id": [4], "MI": [1], "NORM": [0]}).to_csv(tmp_path / "val.csv", index=False)
    table, classes = read_split_files({"train": tmp_path / "train.csv", "val": tmp_path / "val.csv"}, "ecg_id")
    assert classes == ["NORM", "MI"]
    row = table.set_index("key").loc["4"]
    assert (row["split"], row["NORM"], row["MI"]) == ("val", 0, 1)


def test_split_file_errors_name_the_file(tmp_path):
    pd.DataFrame({"ecg_id": [1], "NORM": [1], "MI": [0]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"ecg_id": [2], "NORM": [1]}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(SplitError, match=r"test.csv: label column\(s\) \['MI'\]"):
        read_split_files({"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"}, "ecg_id")
    with pytest.raises(SplitError, match="train.csv: no id column 'Recording'"):
        read_split_files({"train": tmp_path / "train.csv"}, "Recording")
    pd.DataFrame({"ecg_id": [1], "NORM": [1], "MI": [0]}).to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(SplitError, match="more than one split"):
        read_split_files({"train": tmp_path / "train.csv", "val": tmp_path / "val.csv"}, "ecg_id")
