#!/usr/bin/env python3
"""Generate the bundled demo set: clinical record requests -> FHIR search query strings.

Each record is `{"input", "label", "rationale"}`: a natural-language request, the FHIR search
(`Patient?birthdate=gt1990-12-31&gender=female&given=Mary`, parameters sorted by name) and a
step-by-step rationale in the style of a teacher LLM's chain of thought.

Deterministic: only `random.Random` with fixed seeds, no iteration over sets, a fixed output
order; `python datasets/generic/generate_fhir.py` rewrites the committed files byte for byte and
`--check` verifies them. README.md beside this file gives the conventions and the split rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import pathlib
import random
import sys
from collections.abc import Callable

SEED = 2305  # arXiv 2305.02301; the split uses Random(SEED), the examples Random(SEED + 1)
SIZES = {"train": 6000, "valid": 600, "test": 600}
SPLITS = ("train", "valid", "test")
MAX_PARAMS = 4  # search parameters per query at most
HELD_OUT = {"test": 0.12, "valid": 0.10}  # share of each resource's eligible combinations
MIN_LABELS = 300  # valid/test parameter sets allow at least this many labels (unique labels)
# Codes are written bare (code=85354-9 matches that code in any system, per the FHIR search
# spec): the system URLs would add up to 25 constant tokens per label for a small vocabulary.
WITH_SYSTEM = False  # True writes code=http://loinc.org|85354-9
HERE = pathlib.Path(__file__).resolve().parent

# Vocabulary. Data tables are kept dense on purpose.
# fmt: off
MONTHS = ("January February March April May June July August September October November "
          "December").split()
GIVEN = ("Mary James Linda John Maria Robert Susan David Emma Michael Olivia William Sophia "
         "Daniel Ava Joseph Grace Thomas Chloe Andrew Laura Kevin Anna Brian Julia Steven Sarah "
         "Mark Nora Paul Rosa Peter Helen Carlos Aisha Omar Mei Raj Fatima Lucas").split()
FAMILY = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
          "Lopez Wilson Anderson King Taylor Moore Jackson Martin Lee Thompson White Harris Clark "
          "Lewis Walker Young Allen Nguyen Patel").split()
CITIES = ("Boston Chicago Denver Seattle Austin Portland Phoenix Dallas Atlanta Miami Houston "
          "Detroit Nashville Baltimore Cleveland Pittsburgh Sacramento Omaha Tucson "
          "Madison").split()

# Code tables: (code, names; the first name is the display name, [category, value range]).
LOINC = "http://loinc.org"
OBS_CODES = [  # value range None: a panel (blood pressure) has no single value to compare
    ("85354-9", ["blood pressure", "BP"], "vital-signs", None),
    ("8867-4", ["heart rate", "pulse", "HR"], "vital-signs", (40, 180)),
    ("29463-7", ["body weight", "weight"], "vital-signs", (40, 150)),
    ("8302-2", ["body height", "height"], "vital-signs", (140, 200)),
    ("39156-5", ["body mass index", "BMI"], "vital-signs", (15, 45)),
    ("8310-5", ["body temperature", "temperature"], "vital-signs", (35, 41)),
    ("9279-1", ["respiratory rate", "breathing rate", "RR"], "vital-signs", (8, 40)),
    ("2708-6", ["oxygen saturation", "SpO2", "O2 sat"], "vital-signs", (80, 100)),
    ("2339-0", ["blood glucose", "glucose"], "laboratory", (60, 400)),
    ("4548-4", ["hemoglobin A1c", "HbA1c", "A1c"], "laboratory", (4, 14)),
    ("2093-3", ["total cholesterol", "cholesterol"], "laboratory", (100, 300)),
    ("2160-0", ["serum creatinine", "creatinine"], "laboratory", (1, 5)),
]
SNOMED = "http://snomed.info/sct"
CONDITION_CODES = [
    ("44054006", ["type 2 diabetes", "T2DM", "diabetes type 2"]),
    ("38341003", ["hypertension", "high blood pressure", "HTN"]),
    ("195967001", ["asthma"]), ("13645005", ["COPD", "chronic obstructive pulmonary disease"]),
    ("84114007", ["heart failure", "CHF"]), ("49436004", ["atrial fibrillation", "AFib"]),
    ("709044004", ["chronic kidney disease", "CKD"]), ("35489007", ["depression"]),
    ("37796009", ["migraine"]), ("233604007", ["pneumonia"]), ("414916001", ["obesity"]),
    ("55822004", ["hyperlipidemia", "high cholesterol"]),
]
PROCEDURE_CODES = [
    ("80146002", ["appendectomy"]), ("73761001", ["colonoscopy"]),
    ("609588000", ["total knee replacement", "knee replacement"]),
    ("38102005", ["cholecystectomy", "gallbladder removal"]),
    ("232717009", ["coronary artery bypass", "CABG"]), ("52734007", ["hip replacement"]),
    ("110473004", ["cataract surgery"]), ("173422009", ["tonsillectomy"]),
    ("236886002", ["hysterectomy"]), ("11466000", ["cesarean section", "C-section"]),
]
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DRUG_CODES = [(c, [n]) for c, n in [
    ("6809", "metformin"), ("29046", "lisinopril"), ("83367", "atorvastatin"),
    ("17767", "amlodipine"), ("274783", "insulin glargine"), ("435", "albuterol"),
    ("10582", "levothyroxine"), ("7646", "omeprazole"), ("11289", "warfarin"),
    ("5640", "ibuprofen"), ("723", "amoxicillin"), ("4603", "furosemide")]]
CVX = "http://hl7.org/fhir/sid/cvx"
VACCINE_CODES = [
    ("141", ["influenza", "flu"]), ("208", ["COVID-19", "COVID"]),
    ("03", ["MMR", "measles mumps rubella"]), ("115", ["Tdap"]), ("08", ["hepatitis B", "hep B"]),
    ("165", ["HPV"]), ("133", ["pneumococcal", "PCV13"]), ("187", ["shingles", "zoster"]),
    ("21", ["varicella", "chickenpox"]), ("10", ["polio", "IPV"]),
]
# Token values: value -> (forms before the head noun, forms after it).
OBS_CATEGORY = {
    "vital-signs": (["vital sign", "vital-signs"], ["in the vital signs category"]),
    "laboratory": (["lab", "laboratory"], ["in the laboratory category"]),
    "social-history": (["social history"], ["in the social history category"]),
    "survey": (["survey"], ["in the survey category"]), "exam": (["exam"], ["from an exam"])}
CLINICAL = {"active": (["active", "current"], ["that are active", "with clinical status active"]),
            "resolved": (["resolved"], ["that have resolved", "with clinical status resolved"]),
            "inactive": (["inactive"], ["that are inactive", "with clinical status inactive"])}
CONDITION_STATUS = {**CLINICAL, "remission": ([], ["in remission"])}
CONDITION_CATEGORY = {
    "problem-list-item": ([], ["on the problem list", "from the problem list"]),
    "encounter-diagnosis": ([], ["recorded as encounter diagnoses", "made during an encounter"]),
    "health-concern": ([], ["recorded as health concerns", "flagged as a health concern"])}
MED_STATUS = {
    "active": (["active", "current"], ["that are active", "with status active"]),
    "completed": (["completed"], ["that were completed", "with status completed"]),
    "stopped": (["stopped", "discontinued"], ["that were stopped", "with status stopped"]),
    "on-hold": (["on-hold"], ["that are on hold", "with status on-hold"]),
    "cancelled": (["cancelled"], ["that were cancelled", "with status cancelled"]),
    "draft": (["draft"], ["still in draft", "with status draft"])}
MED_INTENT = {v: ([], [f"with intent {v}", f"whose intent is {v}"])
              for v in ("order", "plan", "proposal")}
ENC_CLASS = {"AMB": (["outpatient", "ambulatory"], ["in the outpatient setting"]),
             "EMER": (["emergency", "ER"], ["in the emergency department"]),
             "IMP": (["inpatient", "hospital"], ["as an inpatient"]),
             "HH": (["home health"], ["at home"]),
             "VR": (["virtual", "telehealth"], ["done virtually"])}
ENC_STATUS = {"planned": (["planned", "upcoming"], ["that are planned"]),
              "in-progress": (["ongoing", "in-progress"], ["that are in progress"]),
              "finished": (["finished", "completed"], ["that are finished"]),
              "cancelled": (["cancelled"], ["that were cancelled"])}
IMM_STATUS = {"completed": (["completed"], ["that were completed", "with status completed"]),
              "not-done": ([], ["that were not done", "marked not done"])}
PROC_STATUS = {"completed": (["completed"], ["that were completed", "with status completed"]),
               "in-progress": (["ongoing", "in-progress"], ["that are in progress"]),
               "not-done": ([], ["that were not done", "marked not done"]),
               "stopped": (["stopped"], ["that were stopped"])}
CRITICALITY = {"high": (["high-criticality", "high-risk"], ["with high criticality"]),
               "low": (["low-criticality", "low-risk"], ["with low criticality"]),
               "unable-to-assess": ([], ["whose criticality could not be assessed"])}
ALLERGY_CATEGORY = {"food": (["food"], ["to food"]),
                    "medication": (["medication", "drug"], ["to medications"]),
                    "environment": (["environmental"], ["to the environment"]),
                    "biologic": (["biologic"], ["to biologics"])}
DECEASED = {"true": (["deceased"], ["who have died", "who are deceased"]),
            "false": (["living"], ["who are alive", "who are still living"])}
GENDER = {  # value -> (pre, post, head nouns, weight)
    "female": (["female"], ["who are female", "with gender female"], ["women", "females"], 45),
    "male": (["male"], ["who are male", "with gender male"], ["men", "males"], 45),
    "other": ([], ["with gender other"], [], 5),
    "unknown": ([], ["with unknown gender", "with gender unknown"], [], 5)}
GIVEN_FORMS = ["named {}", "called {}", "with first name {}", "whose given name is {}"]
FAMILY_FORMS = ["with last name {}", "with the surname {}", "surnamed {}",
                "whose family name is {}"]
CITY_FORMS = ["in {}", "living in {}", "from {}", "who live in {}", "with an address in {}"]
VALUE_FORMS = {"gt": ["above {}", "over {}", "greater than {}", "with a value above {}"],
               "lt": ["below {}", "under {}", "less than {}", "with a value below {}"],
               "ge": ["of at least {}", "{} or higher"], "le": ["of at most {}", "{} or lower"]}

# Date phrases by prefix: years ({y}), months ({m} {y}) and days ({d}).
REL = {"gt": "later than", "lt": "earlier than", "ge": "on or after", "le": "on or before",
       "eq": "exactly on"}
YEAR_FORMS = {"gt": ["after {y}", "later than {y}"], "lt": ["before {y}", "prior to {y}"],
              "ge": ["since {y}", "in or after {y}", "{y} or later"],
              "le": ["in or before {y}", "{y} or earlier", "no later than {y}"]}
MONTH_FORMS = {"ge": ["since {m} {y}", "in or after {m} {y}", "starting {m} {y}"],
               "lt": ["before {m} {y}", "prior to {m} {y}"]}
DAY_FORMS = {"eq": ["on {d}"], "gt": ["after {d}", "later than {d}"],
             "lt": ["before {d}", "prior to {d}"], "ge": ["since {d}", "on or after {d}"],
             "le": ["on or before {d}", "until {d}", "no later than {d}"]}
NOT_FOR_BIRTH = ("since", "starting", "until")  # "born since 1990" is not English
BARE_OK = ("since", "before", "after", "on", "in", "prior", "starting", "until")

OPENERS = ["Show me", "Find", "I need", "List", "Get", "Retrieve", "Search for", "Look up",
           "Pull up", "Give me", "Fetch", "Return", "Please find", "I'd like to see", "",
           "Can you find", "Could you pull up", "Are there any"]  # questions last
SUBJECT_FORMS = ["for patient {}", "for pt {}", "of patient {}", "for patient #{}",
                 "for patient ID {}", "belonging to patient {}", "for Patient/{}"]
# fmt: on

Rng = random.Random
Combo = tuple[str, ...]  # a sorted set of search parameter names


@dataclasses.dataclass
class Part:
    """One phrase of a request and the search parameters it sets."""

    text: str  # the words in the request (quoted verbatim in the rationale)
    where: str  # 'poss' (patient 12's), 'pre' (before the head noun), 'head' (is it), 'post'
    assigns: list[tuple[str, str]]  # (parameter, value)
    why: str  # the rationale after the quoted text, ending with the assignment(s)
    rank: int = 5  # pre: adjective order; post: ranks 1, 2 come first, the rest shuffled


def _place(rng: Rng, pre: list[str], post: list[str], p_pre: float = 0.5) -> tuple[str, str]:
    """('pre' or 'post', text): a form before the head noun with probability p_pre, if any."""
    if pre and (not post or rng.random() < p_pre):
        return "pre", rng.choice(pre)
    return "post", rng.choice(post)


def _date(rng: Rng, years: tuple[int, int], birth: bool) -> tuple[str, str, str]:
    """(phrase, value such as 'ge2021-03-01', reason) for a random date condition."""
    y, kind = rng.randint(*years), rng.choice(["year", "year", "month", "day", "day"])
    if kind == "year":  # a whole year: its first or last day, whichever keeps the meaning
        prefix = rng.choice(list(YEAR_FORMS))
        forms, end = YEAR_FORMS[prefix], prefix in ("gt", "le")
        iso = f"{y}-12-31" if end else f"{y}-01-01"
        reason, fill = f"{iso}, the {'last' if end else 'first'} day of {y}", {"y": y}
    elif kind == "month":
        prefix, m = rng.choice(list(MONTH_FORMS)), rng.randint(1, 12)
        forms, iso, name = MONTH_FORMS[prefix], f"{y}-{m:02d}-01", MONTHS[m - 1]
        reason = f"{iso}, the first day of {name} {y}"
        fill = {"y": y, "m": name if rng.random() < 0.7 else name[:3]}
    else:
        prefix, m, d = rng.choice(list(DAY_FORMS)), rng.randint(1, 12), rng.randint(1, 28)
        forms, iso, name = DAY_FORMS[prefix], f"{y}-{m:02d}-{d:02d}", MONTHS[m - 1]
        shown = rng.choice([f"{d} {name} {y}", f"{name} {d}, {y}", iso, f"{d} {name[:3]} {y}"])
        reason, fill = iso, {"d": shown}
    forms = [f for f in forms if not (birth and f.startswith(NOT_FOR_BIRTH))]
    phrase = rng.choice(forms).format(**fill)
    return phrase, prefix + iso, f"means {REL[prefix]} {reason}, so the prefix is {prefix}"


def dated(verbs: list[str], years: tuple[int, int] = (2010, 2024), birth: bool = False):
    """Part maker for a date parameter said as '<verb> <date phrase>'."""

    def make(rng: Rng, param: str) -> Part:
        phrase, value, reason = _date(rng, years, birth)
        verb = rng.choice(verbs)
        if not verb and not phrase.startswith(BARE_OK):  # not "results above 36 2022 or earlier"
            verb = next(v for v in verbs if v)
        return Part(
            f"{verb} {phrase}".strip(), "post", [(param, value)], f"{reason}: {param}={value}."
        )

    return make


def subject(rng: Rng, param: str) -> Part:
    """Part for a patient reference (subject= or patient=), ids of 1 to 4 digits."""
    digits = rng.randint(1, 4)
    pid = str(rng.randint(10 ** (digits - 1) if digits > 1 else 1, 10**digits - 1))
    assigns = [(param, f"Patient/{pid}")]
    why = f"identifies patient {pid}, written as a reference: {param}=Patient/{pid}."
    if rng.random() < 0.15:
        return Part(f"patient {pid}'s", "poss", assigns, why)
    return Part(rng.choice(SUBJECT_FORMS).format(pid), "post", assigns, why)


def _coded_part(rng: Rng, param: str, entry: tuple, system: str, sys_name: str, forms, rank):
    code, names = entry[0], entry[1]
    said = rng.choice(names)
    where, text = _place(rng, [said], [f.format(said) for f in forms], 0.6)
    value = f"{system}|{code}" if WITH_SYSTEM else code
    meaning = f"means {names[0]}, " if said != names[0] else "is "
    return Part(
        text, where, [(param, value)], f"{meaning}{sys_name} code {code}: {param}={value}.", rank
    )


def coded(codes: list[tuple], system: str, sys_name: str, forms: list[str], rank: int = 1):
    """Part maker for a coded parameter: a display name or synonym -> its code."""
    return lambda rng, param: _coded_part(
        rng, param, rng.choice(codes), system, sys_name, forms, rank
    )


def token(table: dict, what: str, rank: int = 5, p_pre: float = 0.5, value: str | None = None):
    """Part maker for a token parameter whose values are the keys of `table`."""

    def make(rng: Rng, param: str) -> Part:
        val = value or rng.choice(list(table))
        where, text = _place(rng, *table[val][:2], p_pre)
        return Part(text, where, [(param, val)], f"gives the {what} {val}: {param}={val}.", rank)

    return make


def listed(values: list[str], forms: list[str], what: str):
    """Part maker for a free-text value from a list, said with one of `forms`."""

    def make(rng: Rng, param: str) -> Part:
        val = rng.choice(values)
        text = rng.choice(forms).format(val)
        return Part(text, "post", [(param, val)], f"gives the {what}: {param}={val}.")

    return make


def gender(rng: Rng, param: str) -> Part:
    """Part for Patient gender: an adjective, a phrase, or the head noun itself ('women')."""
    g = rng.choices(list(GENDER), [v[3] for v in GENDER.values()])[0]
    pre, post, heads, _ = GENDER[g]
    if heads and rng.random() < 0.3:
        return Part(rng.choice(heads), "head", [(param, g)], f"means {g} patients, so gender={g}.")
    where, text = _place(rng, pre, post, 0.6)
    return Part(text, where, [(param, g)], f"gives the administrative gender: gender={g}.", 1)


def build_patient(rng: Rng, combo: Combo) -> list[Part]:
    """Patient: a first and last name may be said together ('named Mary Smith')."""
    if "given" in combo and "family" in combo and rng.random() < 0.5:
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        name = Part(f"{rng.choice(['named', 'called'])} {given} {family}", "post",
                    [("given", given), ("family", family)],
                    f"is a full name: the first name goes in given and the last name in family: "
                    f"given={given}, family={family}.")  # fmt: skip
        rest = tuple(p for p in combo if p not in ("given", "family"))
        return [name, *_build(PATIENT_MAKERS, rng, rest)]
    return _build(PATIENT_MAKERS, rng, combo)


def build_observation(rng: Rng, combo: Combo) -> list[Part]:
    """Observation: category follows the code; value-quantity needs a code with one value."""
    entry = rng.choice([c for c in OBS_CODES if c[3] or "value-quantity" not in combo])
    parts = []
    if "code" in combo:
        parts.append(_coded_part(rng, "code", entry, LOINC, "LOINC", ["for {}", "of {}"], 1))
    if "category" in combo:  # consistent with the code when both are asked for
        category = entry[2] if "code" in combo else None
        parts.append(token(OBS_CATEGORY, "category", 0, value=category)(rng, "category"))
    if "value-quantity" in combo:
        n, prefix = rng.randint(*entry[3]), rng.choice(list(VALUE_FORMS))
        value = f"{prefix}{n}"
        parts.append(Part(rng.choice(VALUE_FORMS[prefix]).format(n), "post",
                          [("value-quantity", value)], f"compares the value with {n}, so the "
                          f"prefix is {prefix}: value-quantity={value}.", 2))  # fmt: skip
    rest = tuple(p for p in combo if p in ("date", "subject"))
    return parts + _build(OBSERVATION_MAKERS, rng, rest)


def _build(makers: dict[str, Callable[[Rng, str], Part]], rng: Rng, combo: Combo) -> list[Part]:
    """One part per parameter of the combination, made in the makers' (fixed) order."""
    return [make(rng, param) for param, make in makers.items() if param in combo]


PATIENT_MAKERS = {
    "deceased": token(DECEASED, "deceased flag", 0), "gender": gender,
    "given": listed(GIVEN, GIVEN_FORMS, "first name"),
    "family": listed(FAMILY, FAMILY_FORMS, "last name"),
    "birthdate": dated(["born", "with a birth date"], (1930, 2015), birth=True),
    "address-city": listed(CITIES, CITY_FORMS, "city of the address"),
}  # fmt: skip
OBSERVATION_MAKERS = {"date": dated(["", "recorded", "taken"]), "subject": subject}


@dataclasses.dataclass(frozen=True)
class Resource:
    """A FHIR resource type: how to say it and which search parameters it takes."""

    heads: list[str]  # head nouns naming the resource in a request
    desc: str  # what the resource holds, for the rationale
    cards: dict[str, int]  # parameter -> about how many distinct values it takes
    build: Callable[[Rng, Combo], list[Part]]


def _simple(**makers: Callable[[Rng, str], Part]) -> Callable[[Rng, Combo], list[Part]]:
    """A builder with one maker per parameter (keyword names use _ for -)."""
    table = {name.replace("_", "-"): make for name, make in makers.items()}
    return lambda rng, combo: _build(table, rng, combo)


MANY = 1000  # patient ids and dates
# fmt: off
RESOURCES: dict[str, Resource] = {
    "Patient": Resource(
        ["patients", "pts", "patient records"], "patients",
        {"address-city": 20, "birthdate": MANY, "deceased": 2, "family": 30, "gender": 4,
         "given": 40}, build_patient),
    "Observation": Resource(
        ["observations", "readings", "measurements", "results"], "observations (measurements)",
        {"category": 5, "code": 12, "date": MANY, "subject": MANY, "value-quantity": 100},
        build_observation),
    "Condition": Resource(
        ["conditions", "diagnoses", "problems"], "conditions (diagnoses)",
        {"category": 3, "clinical-status": 4, "code": 12, "onset-date": MANY, "subject": MANY},
        _simple(clinical_status=token(CONDITION_STATUS, "clinical status", 0),
                code=coded(CONDITION_CODES, SNOMED, "SNOMED CT", ["of {}", "coded as {}"]),
                category=token(CONDITION_CATEGORY, "category"),
                onset_date=dated(["with onset", "that started"], (2005, 2024)), subject=subject)),
    "MedicationRequest": Resource(
        ["medication requests", "prescriptions", "medication orders", "med orders"],
        "medication requests (prescriptions)",
        {"authoredon": MANY, "code": 12, "intent": 3, "status": 6, "subject": MANY},
        _simple(status=token(MED_STATUS, "status", 0),
                code=coded(DRUG_CODES, RXNORM, "RxNorm", ["for {}", "of {}"]),
                intent=token(MED_INTENT, "intent"),
                authoredon=dated(["written", "prescribed", "authored"]), subject=subject)),
    "Encounter": Resource(
        ["encounters", "visits"], "encounters (visits)",
        {"class": 5, "date": MANY, "status": 4, "subject": MANY},
        _simple(status=token(ENC_STATUS, "status", 0),
                **{"class": token(ENC_CLASS, "encounter class", 1, p_pre=0.7)},
                date=dated(["", "that took place", "dated"]), subject=subject)),
    "Immunization": Resource(
        ["immunizations", "vaccinations", "shots", "vaccine records"], "immunizations",
        {"date": MANY, "patient": MANY, "status": 2, "vaccine-code": 10},
        _simple(status=token(IMM_STATUS, "status", 0),
                vaccine_code=coded(VACCINE_CODES, CVX, "CVX", ["against {}", "for {}"]),
                date=dated(["given", "administered", ""]), patient=subject)),
    "Procedure": Resource(
        ["procedures", "procedure records"], "procedures",
        {"code": 10, "date": MANY, "status": 4, "subject": MANY},
        _simple(status=token(PROC_STATUS, "status", 0),
                code=coded(PROCEDURE_CODES, SNOMED, "SNOMED CT", ["for {}", "coded as {}"]),
                date=dated(["performed", "done", ""]), subject=subject)),
    "AllergyIntolerance": Resource(
        ["allergies", "allergy records", "allergy intolerances"], "allergy records",
        {"category": 4, "clinical-status": 3, "criticality": 3, "patient": MANY},
        _simple(clinical_status=token(CLINICAL, "clinical status", 0),
                criticality=token(CRITICALITY, "criticality", 1),
                category=token(ALLERGY_CATEGORY, "category", 2), patient=subject)),
}
# fmt: on


def combinations(resource: str) -> list[Combo]:
    """Every allowed parameter set of a resource, as sorted tuples, in a fixed order."""
    out = []
    for k in range(1, MAX_PARAMS + 1):
        for combo in itertools.combinations(sorted(RESOURCES[resource].cards), k):
            if "value-quantity" not in combo or "code" in combo:  # a value needs a measurement
                out.append(combo)
    return out


def _labels(resource: str, combo: Combo) -> int:
    """About how many distinct labels a parameter set allows."""
    return math.prod(RESOURCES[resource].cards[p] for p in combo)


def split_combinations(seed: int = SEED) -> dict[str, dict[str, list[Combo]]]:
    """split -> resource -> parameter sets; a held-out (valid/test) set is in no other split.

    Only maximal sets are held out: 3+ parameters that no allowed set contains (4 parameters,
    or all of a resource's) and that allow at least MIN_LABELS labels. So every subset one
    parameter smaller of a held-out set is a train set, and no train set contains a held-out
    one (from which a student would learn to add the extra parameter). Per resource, the
    eligible sets are shuffled and about HELD_OUT[split] of them (at least one while any are
    left) go to test, then to valid; train holds all the others.
    """
    rng = random.Random(seed)
    out: dict[str, dict[str, list[Combo]]] = {s: {} for s in SPLITS}
    for name in RESOURCES:
        allowed = combinations(name)
        eligible = [
            c
            for c in allowed
            if len(c) >= 3
            and _labels(name, c) >= MIN_LABELS
            and not any(set(c) < set(t) for t in allowed)
        ]
        rng.shuffle(eligible)
        count = len(eligible)
        for split in ("test", "valid"):
            take = max(1, round(HELD_OUT[split] * count))
            out[split][name], eligible = eligible[:take], eligible[take:]
        held = out["test"][name] + out["valid"][name]
        out["train"][name] = [c for c in allowed if c not in held]
    return out


def make_record(rng: Rng, resource: str, combo: Combo) -> dict[str, str]:
    """One {input, label, rationale} record for a resource and parameter set."""
    res = RESOURCES[resource]
    parts = res.build(rng, combo)
    heads = [p for p in parts if p.where == "head"]
    post = [p for p in parts if p.where == "post"]
    rng.shuffle(post)
    post.sort(key=lambda p: p.rank if p.rank in (1, 2) else 3)  # code, value, rest shuffled
    segments: list[Part | str] = [p for p in parts if p.where == "poss"]
    segments += sorted((p for p in parts if p.where == "pre"), key=lambda p: p.rank)
    segments += heads or [rng.choice(res.heads)]
    segments += post
    poss = isinstance(segments[0], Part) and segments[0].where == "poss"
    opener = rng.choice(OPENERS[:-1] if poss else OPENERS)  # not "Are there any patient 7's"
    question = opener.startswith(("Can", "Could", "Are"))
    det = "" if poss or question else rng.choice(["", "", "all ", "the "])
    if opener:
        opener = (opener[0].lower() + opener[1:] if rng.random() < 0.1 else opener) + " "
    elif det:
        det = det.capitalize()
    elif isinstance(segments[0], Part):  # the request starts with the noun phrase
        segments[0].text = segments[0].text[0].upper() + segments[0].text[1:]
    else:
        segments[0] = segments[0][0].upper() + segments[0][1:]
    polite = not opener.lower().startswith("please")  # no "please find ..., please"
    end = "?" if question else rng.choice(["", "", "."] + [", please"] * polite)
    words = " ".join(s.text if isinstance(s, Part) else s for s in segments)
    label = (
        resource
        + "?"
        + "&".join(f"{k}={v}" for k, v in sorted(a for p in parts for a in p.assigns))
    )
    head = heads[0].text if heads else next(s for s in segments if isinstance(s, str))
    steps = [f"'{head}' refers to {res.desc}, so the resource type is {resource}."]
    steps += [f"'{s.text}' {s.why}" for s in segments if isinstance(s, Part)]
    steps.append(f"Sorting the parameters by name gives {label}.")
    return {"input": f"{opener}{det}{words}{end}", "label": label, "rationale": " ".join(steps)}


def _draw(rng: Rng, combos: dict[str, list[Combo]]) -> tuple[str, Combo]:
    """A resource, then a number of parameters, then a parameter set, each uniformly."""
    resource = rng.choice([r for r in RESOURCES if combos.get(r)])
    size = rng.choice(sorted({len(c) for c in combos[resource]}))
    return resource, rng.choice([c for c in combos[resource] if len(c) == size])


def generate(seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """split -> records. Inputs are unique over all splits; valid/test labels within a split.

    Every other valid/test record (the 1st, 3rd, ...) uses a held-out parameter set; the rest
    use train parameter sets with at least MIN_LABELS labels, with labels absent from train.
    """
    sizes = sizes or SIZES
    combos = split_combinations(seed)
    seen_sets = {  # train parameter sets that can give valid/test labels train lacks
        r: [c for c in cs if _labels(r, c) >= MIN_LABELS] for r, cs in combos["train"].items()
    }
    rng = random.Random(seed + 1)
    inputs: set[str] = set()  # membership only, never iterated: the output stays deterministic
    train_labels: set[str] = set()
    out = {}
    for split in SPLITS:
        records, labels, tries = [], set(), 0
        while len(records) < sizes[split]:
            tries += 1
            if tries > 50 * sizes[split]:
                raise RuntimeError(f"{split}: cannot draw {sizes[split]} distinct examples")
            held = split != "train" and len(records) % 2 == 0
            resource, combo = _draw(rng, combos[split] if split == "train" or held else seen_sets)
            rec = make_record(rng, resource, combo)
            if rec["input"] in inputs or (
                split != "train" and (rec["label"] in labels or rec["label"] in train_labels)
            ):
                continue
            inputs.add(rec["input"])
            labels.add(rec["label"])
            records.append(rec)
        if split == "train":
            train_labels = labels
        out[split] = records
    return out


def file_contents(seed: int = SEED) -> dict[str, bytes]:
    """File name -> bytes: JSON Lines, keys in the order input, label, rationale."""
    return {
        f"generic_{split}.json": "".join(json.dumps(r) + "\n" for r in recs).encode("utf-8")
        for split, recs in generate(seed).items()
    }


def check(out_dir: pathlib.Path, seed: int = SEED) -> list[str]:
    """Names of the files in out_dir that are missing or differ from a fresh generation."""
    out_dir = pathlib.Path(out_dir)
    return [
        name
        for name, data in file_contents(seed).items()
        if not (out_dir / name).is_file() or (out_dir / name).read_bytes() != data
    ]


def write(out_dir: pathlib.Path, seed: int = SEED) -> dict[str, int]:
    """Write the files into out_dir (each atomically); returns name -> size in bytes."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, data in file_contents(seed).items():
        tmp = out_dir / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out_dir / name)
        sizes[name] = len(data)
    return sizes


def main(argv: list[str] | None = None) -> int:
    """Command line: write the files (default: next to this script) or --check them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out_dir", type=pathlib.Path, default=HERE, help="where the files go")
    ap.add_argument(
        "--check", action="store_true", help="regenerate in memory; exit 1 if the files differ"
    )
    args = ap.parse_args(argv)
    if args.check:
        bad = check(args.out_dir)
        for name in bad:
            print(f"{args.out_dir / name}: differs from a fresh generation", file=sys.stderr)
        if not bad:
            print(f"{args.out_dir}: all files match a fresh generation")
        return 1 if bad else 0
    for name, size in write(args.out_dir).items():
        print(f"wrote {args.out_dir / name} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
