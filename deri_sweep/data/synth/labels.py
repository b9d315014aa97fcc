"""Condition sets of synthetic records and the labels, codes and report text derived from them.

Every label a synthetic file carries is a function of the record's condition set
(:mod:`deri_sweep.data.synth.dipole`), so a model that learns the signal can predict
it. The tables below map each condition to the code or statement a dataset uses
(PTB-XL SCP codes with their real ``scp_statements.csv`` flags, CPSC2018 classes,
Chapman-Shaoxing-Ningbo SNOMED CT codes, MIMIC-IV-ECG machine statements).
"""

from __future__ import annotations

import numpy as np

from deri_sweep.data.synth.dipole import EXCLUSIVE, RHYTHMS, Condition

#: Canonical order of conditions in joined strings and label lists.
ORDER: tuple[str, ...] = tuple(c.value for c in Condition)
#: Prevalence of each non-rhythm condition in an abnormal record (drawn in ORDER, incompatible ones skipped).
PREVALENCE: dict[str, float] = {
    "1AVB": 0.12, "RBBB": 0.14, "LBBB": 0.08, "STE": 0.08, "STD": 0.12, "TINV": 0.12, "LVH": 0.12,
    "PAC": 0.1, "PVC": 0.1,
}  # fmt: skip
RHYTHM_WEIGHTS: dict[str, float] = {"SR": 0.45, "SBRAD": 0.2, "STACH": 0.15, "AFIB": 0.2}
#: CPSC2018 classes: abbreviation -> (condition, SNOMED CT code, class weight when drawing).
CPSC_CLASSES: dict[str, tuple[str, str, float]] = {
    "Normal": ("SR", "426783006", 0.13), "AF": ("AFIB", "164889003", 0.18), "I-AVB": ("1AVB", "270492004", 0.1),
    "LBBB": ("LBBB", "164909002", 0.05), "RBBB": ("RBBB", "59118001", 0.24), "PAC": ("PAC", "284470004", 0.09),
    "PVC": ("PVC", "164884008", 0.1), "STD": ("STD", "429622005", 0.12), "STE": ("STE", "164931005", 0.03),
}  # fmt: skip
#: CSN: condition -> (acronym, full name, SNOMED CT) as in ConditionNames_SNOMED-CT.csv.
CSN_CODES: dict[str, tuple[str, str, str]] = {
    "SR": ("SR", "Sinus Rhythm", "426783006"), "SBRAD": ("SB", "Sinus Bradycardia", "426177001"),
    "STACH": ("ST", "Sinus Tachycardia", "427084000"), "AFIB": ("AFIB", "Atrial Fibrillation", "164889003"),
    "1AVB": ("1AVB", "1 degree atrioventricular block", "270492004"),
    "RBBB": ("RBBB", "right bundle branch block", "59118001"),
    "LBBB": ("LBBB", "left bundle branch block", "164909002"),
    "STE": ("STTU", "ST tilt up", "164931005"), "STD": ("STDD", "ST drop down", "429622005"),
    "TINV": ("TWO", "T wave opposite", "59931005"), "LVH": ("LVH", "left ventricle hypertrophy", "164873001"),
    "PAC": ("APB", "atrial premature beats", "284470004"), "PVC": ("VPB", "ventricular premature beat", "17338001"),
}  # fmt: skip
#: PTB-XL: condition -> SCP codes (diagnostic ones first). A record of {"SR"} alone is NORM.
PTBXL_CODES: dict[str, tuple[str, ...]] = {
    "SR": ("SR",), "SBRAD": ("SBRAD",), "STACH": ("STACH",), "AFIB": ("AFIB",), "1AVB": ("1AVB",),
    "RBBB": ("CRBBB",), "LBBB": ("CLBBB",), "STE": ("AMI", "STE_"), "STD": ("ISC_", "STD_"),
    "TINV": ("NDT", "INVT"), "LVH": ("LVH", "VCLVH"), "PAC": ("PAC",), "PVC": ("PVC",),
}  # fmt: skip
SCP_COLUMNS: tuple[str, ...] = (
    "", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass", "Statement Category",
    "SCP-ECG Statement Description", "AHA code", "aECG REFID", "CDISC Code", "DICOM Code",
)  # fmt: skip
_IMP = "Statements related to impulse formation (abnormalities)"
_ECT = "Statements related to ectopic rhythm abnormalities"
_STT = "Basic roots for coding ST-T changes and abnormalities"
_CD = "Intraventricular and intra-atrial Conduction disturbances"
#: Rows of scp_statements.csv for every code used, mirroring the flags and classes of PTB-XL v1.0.3.
SCP_ROWS: tuple[tuple[str, ...], ...] = (
    ("NDT", "non-diagnostic T abnormalities", "1.0", "1.0", "", "STTC", "STTC", "other ST-T descriptive statements",
     "non-diagnostic T abnormalities", "", "", "", ""),
    ("NORM", "normal ECG", "1.0", "", "", "NORM", "NORM", "Normal/abnormal", "normal ECG", "1", "", "", "F-000B7"),
    ("LVH", "left ventricular hypertrophy", "1.0", "", "", "HYP", "LVH", "Ventricular Hypertrophy",
     "left ventricular hypertrophy", "142", "", "C71076", ""),
    ("ISC_", "non-specific ischemic", "1.0", "", "", "STTC", "ISC_", _STT, "ischemic ST-T changes", "226", "", "", ""),
    ("1AVB", "first degree AV block", "1.0", "", "", "CD", "_AVB", "Sinus node dysfunction, atrial and AV-conduction "
     "defects", "first degree AV block", "", "MDC_ECG_RHY_AV_HEART_BLK_DEG_1", "C111088", ""),
    ("CRBBB", "complete right bundle branch block", "1.0", "", "", "CD", "CRBBB", _CD,
     "(complete) right bundle branch block", "106", "MDC_ECG_BEAT_RBB_BLK_COMP", "C62270", "D3-33110"),
    ("CLBBB", "complete left bundle branch block", "1.0", "", "", "CD", "CLBBB", _CD,
     "(complete) left bundle branch block", "104", "MDC_ECG_BEAT_LBB_BLK_COMP", "C62269", "D3-33120 or 122752"),
    ("AMI", "anterior myocardial infarction", "1.0", "", "", "MI", "AMI", "Myocardial Infarction",
     "anterior myocardial infarction", "160", "", "", ""),
    ("PVC", "ventricular premature complex", "", "1.0", "", "", "", _ECT, "ventricular premature complex (beat)", "60",
     "MDC_ECG_BEAT_V_P_C", "", ""),
    ("STD_", "non-specific ST depression", "", "1.0", "", "", "", _STT, "non-specific ST depression", "502", "", "",
     "F-38278"),
    ("VCLVH", "voltage criteria (QRS) for left ventricular hypertrophy", "", "1.0", "", "", "",
     "Ventricular Hypertrophy", "voltage criteria (QRS) for left ventricular hypertrophy", "", "", "", ""),
    ("PAC", "atrial premature complex", "", "1.0", "", "", "", _ECT, "atrial premature complex (beat)", "30",
     "MDC_ECG_BEAT_ATR_P_C", "", ""),
    ("INVT", "inverted T-waves", "", "1.0", "", "", "", "other ST-T descriptive statements", "inverted T-waves", "367",
     "", "", ""),
    ("STE_", "non-specific ST elevation", "", "1.0", "", "", "", _STT, "non-specific ST elevation", "501",
     "MDC_ECG_RHY_STELVATION", "", "F-38277"),
    ("SR", "sinus rhythm", "", "", "1.0", "", "", _IMP, "sinus rhythm", "20", "MDC_ECG_RHY_SINUS_RHY", "", ""),
    ("AFIB", "atrial fibrillation", "", "", "1.0", "", "", _IMP, "atrial fibrillation", "50", "MDC_ECG_RHY_ATR_FIB", "",
     "D3-31520"),
    ("STACH", "sinus tachycardia", "", "", "1.0", "", "", _IMP, "sinus tachycardia", "21", "MDC_ECG_RHY_SINUS_TACHY",
     "", ""),
    ("SBRAD", "sinus bradycardia", "", "", "1.0", "", "", _IMP, "sinus bradycardia", "22", "MDC_ECG_RHY_SINUS_BRADY",
     "", ""),
)  # fmt: skip
_DIAGNOSTIC = {row[0] for row in SCP_ROWS if row[2]}
#: MIMIC-IV-ECG machine statement per condition.
MIMIC_STATEMENTS: dict[str, str] = {
    "SR": "Sinus rhythm", "SBRAD": "Sinus bradycardia", "STACH": "Sinus tachycardia", "AFIB": "Atrial fibrillation",
    "PAC": "Premature atrial contractions", "PVC": "Premature ventricular contractions",
    "1AVB": "1st degree A-V block", "RBBB": "Right bundle branch block", "LBBB": "Left bundle branch block",
    "LVH": "Left ventricular hypertrophy", "STE": "ST elevation", "STD": "ST depression", "TINV": "T wave inversion",
}  # fmt: skip
_GERMAN: dict[str, str] = {
    "SR": "sinusrhythmus", "SBRAD": "sinusbradykardie", "STACH": "sinustachykardie", "AFIB": "vorhofflimmern",
    "1AVB": "av-block i. grades", "RBBB": "kompletter rechtsschenkelblock", "LBBB": "kompletter linksschenkelblock",
    "LVH": "linksherzhypertrophie", "STE": "st-hebung anterior", "STD": "st-senkung", "TINV": "t-negativierung",
    "PAC": "supraventrikulÄre extrasystolen", "PVC": "ventrikulÄre extrasystolen",
}  # fmt: skip


def ordered(conditions: frozenset[str] | set[str]) -> list[str]:
    """Conditions in :data:`ORDER`."""
    return [c for c in ORDER if c in conditions]


def is_normal(conditions: frozenset[str] | set[str]) -> bool:
    """A normal ECG: sinus rhythm at a normal rate and nothing else."""
    return set(conditions) == {"SR"}


def _valid(conds: set[str]) -> bool:
    return not any(a in conds and b in conds for a, b in EXCLUSIVE)


def sample_conditions(rng: np.random.Generator, p_normal: float = 0.3) -> frozenset[str]:
    """Draw one record's conditions (MIMIC-IV-ECG, PTB-XL and CSN mix).

    Args:
        rng: random generator.
        p_normal: probability of a normal ECG ({"SR"} alone).

    Returns:
        A valid condition set with exactly one rhythm.
    """
    if rng.random() < p_normal:
        return frozenset({"SR"})
    rhythm = str(rng.choice(list(RHYTHM_WEIGHTS), p=list(RHYTHM_WEIGHTS.values())))
    conds = {rhythm}
    draws = rng.random(len(PREVALENCE))
    for u, (name, p) in zip(draws, PREVALENCE.items(), strict=True):
        if u < p and _valid(conds | {name}):
            conds.add(name)
    return frozenset(conds)


def sample_cpsc_conditions(rng: np.random.Generator) -> frozenset[str]:
    """Draw one CPSC2018 record: one of the 9 classes, a second compatible one with probability 0.15."""
    names = list(CPSC_CLASSES)
    weights = np.array([CPSC_CLASSES[n][2] for n in names])
    first, second = (CPSC_CLASSES[str(n)][0] for n in rng.choice(names, size=2, p=weights / weights.sum()))
    conds = {first} if first == "AFIB" else {"SR", first}
    if first != "SR" and second not in conds and second != "SR" and rng.random() < 0.15:
        both = conds - {"SR"} | {second} if second == "AFIB" else conds | {second}
        conds = both if _valid(both) else conds
    return frozenset(conds)


def cpsc_labels(conditions: frozenset[str], dx: str = "snomed") -> list[str]:
    """CPSC2018 labels of a record: abbreviations (``dx="abbrev"``) or SNOMED CT codes."""
    present = [a for a, (cond, _, _) in CPSC_CLASSES.items() if cond in conditions and a != "Normal"]
    abbrevs = present or ["Normal"]
    return abbrevs if dx == "abbrev" else [CPSC_CLASSES[a][1] for a in abbrevs]


def csn_codes(conditions: frozenset[str]) -> list[str]:
    """SNOMED CT codes of a CSN record's ``#Dx`` line, rhythm first."""
    return [CSN_CODES[c][2] for c in ordered(conditions)]


def ptbxl_scp_codes(conditions: frozenset[str], rng: np.random.Generator) -> dict[str, float]:
    """PTB-XL ``scp_codes``: diagnostic codes with a likelihood, form/rhythm codes with 0.0, diagnostic first."""
    codes = ["NORM"] if is_normal(conditions) else []
    for c in ordered(conditions):
        codes.extend(PTBXL_CODES[c])
    diag = [c for c in codes if c in _DIAGNOSTIC]
    form = [c for c in codes if c not in _DIAGNOSTIC and c not in RHYTHMS]
    rhythm = [c for c in codes if c in RHYTHMS]
    return {**{c: float(rng.choice([100.0, 100.0, 80.0])) for c in diag}, **dict.fromkeys(form + rhythm, 0.0)}


def ptbxl_report(conditions: frozenset[str]) -> str:
    """A short German free-text report as PTB-XL writes them."""
    words = [_GERMAN[c] for c in ordered(conditions)]
    return " ".join([*words, "normales ekg"] if is_normal(conditions) else words)


def mimic_statements(conditions: frozenset[str], rng: np.random.Generator) -> list[str]:
    """Machine statements of one MIMIC-IV-ECG study, one per report_N column, with formatting noise.

    The noise is what the spec's cleaning removes: ``EKG`` spellings, ``***`` wrappers,
    trailing spaces.
    """
    lines = [MIMIC_STATEMENTS[c] for c in ordered(conditions)]
    summary = "Normal ECG" if is_normal(conditions) else "Abnormal ECG"
    if rng.random() < 0.25:
        summary = summary.replace("ECG", "EKG")
    if rng.random() < 0.15:
        summary = f"*** {summary} ***"
    lines.append(summary)
    pad = rng.random(len(lines)) < 0.2
    return [s + "  " if p else s for s, p in zip(lines, pad, strict=True)]
