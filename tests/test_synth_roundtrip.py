"""The synthetic twin, written in the real layouts, is read by the real readers."""

from __future__ import annotations

import numpy as np
import pytest

from deri_sweep.data.readers import open_reader
from deri_sweep.data.record import RecordError
from tests.conftest import SYNTH_FOLDERS

EXPECTED_REASON = {
    "": None,
    "nan_run": None,  # repaired and kept
    "flat_lead": "flat_lead",
    "truncated_dat": "truncated_signal",
    "malformed_header": "bad_header",
    "missing_file": "missing_file",
    "empty_report": "short_report",
}

# condition of the generator -> label expected from each reader
PTBXL_SUPER = {"AFIB": None, "RBBB": "CD", "LBBB": "CD", "1AVB": "CD", "LVH": "HYP", "STE": "MI", "STD": "STTC"}
CPSC = {"AFIB": "AF", "RBBB": "RBBB", "LBBB": "LBBB", "1AVB": "I-AVB", "PAC": "PAC", "PVC": "PVC", "STD": "STD"}
CSN = {"AFIB": "AFIB", "RBBB": "RBBB", "LBBB": "LBBB", "SBRAD": "SB", "STACH": "ST", "1AVB": "1AVB", "LVH": "LVH"}


@pytest.mark.parametrize("fmt", ["mimic", "ptbxl", "cpsc2018", "csn"])
def test_every_record_reads_or_fails_with_the_injected_reason(fmt, synth_root, synth_manifest):
    reader = open_reader(fmt, synth_root / SYNTH_FOLDERS[fmt])
    truth = synth_manifest[synth_manifest["dataset"] == fmt].set_index("record_id")
    keys = reader.keys()
    assert len(keys) == len(truth)
    kinds = set(truth["defect"]) - {""}
    assert kinds >= {"nan_run", "flat_lead", "truncated_dat", "malformed_header", "missing_file"}
    for key in keys:
        defect = truth.loc[key, "defect"]
        expected = EXPECTED_REASON[defect]
        if expected is None:
            rec = reader.read(key)
            assert rec.signal.shape == (12, 5000) and np.isfinite(rec.signal).all()
            assert (rec.repaired > 0) == (defect == "nan_run"), key
        else:
            with pytest.raises(RecordError) as info:
                reader.read(key)
            assert info.value.reason == expected, (key, defect, info.value)


def _conditions(truth, key):
    return set(filter(None, truth.loc[key, "conditions"].split(";")))


@pytest.mark.parametrize(
    ("fmt", "label_set", "table"),
    [("ptbxl", "super", PTBXL_SUPER), ("cpsc2018", "cpsc2018", CPSC), ("csn", "csn", CSN)],
)
def test_labels_follow_the_generated_conditions(fmt, label_set, table, synth_root, synth_manifest):
    reader = open_reader(fmt, synth_root / SYNTH_FOLDERS[fmt])
    truth = synth_manifest[(synth_manifest["dataset"] == fmt) & (synth_manifest["defect"] == "")].set_index("record_id")
    checked = 0
    for key in truth.index[:60]:
        labels = set(reader.read(key).labels[label_set])
        for condition in _conditions(truth, key):
            if table.get(condition):
                assert table[condition] in labels, (key, condition, labels)
                checked += 1
    assert checked >= 20


def test_mimic_reports_are_cleaned_and_match_conditions(synth_root, synth_manifest):
    reader = open_reader("mimic", synth_root / SYNTH_FOLDERS["mimic"])
    truth = synth_manifest[(synth_manifest["dataset"] == "mimic") & (synth_manifest["defect"] == "")].set_index(
        "record_id"
    )
    for key in truth.index[:40]:
        rec = reader.read(key)
        assert rec.report == rec.report.lower() and rec.report.endswith(".")
        assert "ekg" not in rec.report and "*" not in rec.report
        assert len(rec.report.split()) >= 4
        conditions = _conditions(truth, key)
        if "AFIB" in conditions:
            assert "atrial fibrillation" in rec.report
        if "RBBB" in conditions:
            assert "right bundle branch block" in rec.report
        assert rec.subject_id is not None
