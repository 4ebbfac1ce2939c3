#!/usr/bin/env python3
"""Validate a leukoscope report.fhir.json with an independent FHIR R4 library.

Parses the Bundle with PyPI `fhir.resources` 6.1.0 (FHIR 4.0.1 models: types,
cardinalities, unknown elements), then checks what those models leave to
terminology: status codes, references that resolve inside the Bundle, LOINC
codes with a valid check digit, UCUM percentages, the schema tag and the
software/model versions. Exit 0 when valid, 1 with the reasons when not,
2 when the validator itself is missing (never a silent pass).

Installed by .ci/run into tools/.venv-fhir (tools/requirements-fhir.txt);
run by tests/report_files.rs.

usage: check_fhir.py REPORT.fhir.json [--status preliminary|final]
"""
import argparse
import json
import re
import sys

try:
    import fhir.resources
    from fhir.resources.bundle import Bundle
except ImportError as e:  # a missing validator is a failure, loudly
    print(f"FATAL: fhir.resources is not installed ({e}); "
          "install it: python3 -m venv tools/.venv-fhir && "
          "tools/.venv-fhir/bin/pip install -r tools/requirements-fhir.txt", file=sys.stderr)
    sys.exit(2)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
STATUSES = {"preliminary", "final"}


def loinc_check_digit_ok(code):
    """LOINC codes end in a mod-10 (Luhn) check digit."""
    m = re.fullmatch(r"(\d{1,7})-(\d)", code)
    if not m:
        return False
    digits, check = m.group(1), int(m.group(2))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d // 10 + d % 10
        total += d
    return (10 - total % 10) % 10 == check


def check(doc, want_status=None):
    errors = []
    if fhir.resources.__fhir_version__ != "4.0.1":
        errors.append(f"validator models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1")
    try:
        Bundle.parse_obj(doc)
    except Exception as e:  # pydantic's ValidationError lists every problem
        errors.append(f"not a valid FHIR R4 Bundle: {e}")
        return errors
    if doc.get("type") != "collection":
        errors.append(f"Bundle.type {doc.get('type')!r}, expected 'collection'")
    entries = doc.get("entry", [])
    by_url = {}
    for e in entries:
        url = e.get("fullUrl")
        if not url or not url.startswith("urn:uuid:"):
            errors.append(f"entry without a urn:uuid fullUrl: {url!r}")
        elif url in by_url:
            errors.append(f"fullUrl {url} used twice")
        by_url[url] = e["resource"]
    for r in [doc] + list(by_url.values()):
        tags = [t.get("code") for t in r.get("meta", {}).get("tag", [])]
        if not any(t and t.startswith("leukoscope-report/") for t in tags):
            errors.append(f"{r['resourceType']} lacks the schema tag")
    kinds = [r["resourceType"] for r in by_url.values()]
    reports = [r for r in by_url.values() if r["resourceType"] == "DiagnosticReport"]
    if len(reports) != 1:
        return errors + [f"{len(reports)} DiagnosticReports, expected 1"]
    report = reports[0]
    status = report["status"]
    if status not in STATUSES:
        errors.append(f"DiagnosticReport.status {status!r} not in {sorted(STATUSES)}")
    if want_status and status != want_status:
        errors.append(f"DiagnosticReport.status {status!r}, expected {want_status!r}")
    codes = [c.get("code") for c in report["code"].get("coding", []) if c.get("system") == LOINC]
    if codes != ["69738-3"]:
        errors.append(f"DiagnosticReport.code {codes}, expected LOINC 69738-3")
    if status == "final" and not report.get("resultsInterpreter"):
        errors.append("final report without a resultsInterpreter (the reviewer)")
    observations = []
    for ref in report.get("result", []):
        target = by_url.get(ref.get("reference"))
        if target is None or target["resourceType"] != "Observation":
            errors.append(f"DiagnosticReport.result {ref} does not resolve to an Observation in the Bundle")
        else:
            observations.append(target)
    if len(observations) != kinds.count("Observation"):
        errors.append("an Observation is not among the DiagnosticReport's results")
    devices = [r for r in by_url.values() if r["resourceType"] == "Device"]
    versions = " ".join(v.get("value", "") for d in devices for v in d.get("version", []))
    if not re.search(r"leukoscope \d+\.\d+", versions) or "sha256:" not in versions:
        errors.append(f"Device does not name the software and model versions: {versions!r}")
    loinc_seen = set()
    for o in observations:
        if o["status"] != status:
            errors.append(f"Observation.status {o['status']!r} differs from the report's {status!r}")
        for c in o["code"].get("coding", []):
            if c.get("system") == LOINC:
                if not loinc_check_digit_ok(c["code"]):
                    errors.append(f"LOINC code {c['code']} has a wrong check digit")
                loinc_seen.add(c["code"])
        q = o.get("valueQuantity", {})
        if q.get("code") == "%":
            if q.get("system") != UCUM or not 0 <= q.get("value", -1) <= 100:
                errors.append(f"percentage {q} is not UCUM % in 0..100")
        for ref in [o.get("device", {})] + ([o["specimen"]] if "specimen" in o else []):
            if ref.get("reference") not in by_url:
                errors.append(f"Observation reference {ref} does not resolve")
    if "26446-5" not in loinc_seen:
        errors.append("no Blasts/100 leukocytes (LOINC 26446-5) Observation")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--status", choices=sorted(STATUSES))
    a = ap.parse_args()
    with open(a.bundle, encoding="utf-8") as f:
        doc = json.load(f)
    errors = check(doc, a.status)
    if errors:
        for e in errors:
            print(f"INVALID {a.bundle}: {e}", file=sys.stderr)
        sys.exit(1)
    n = sum(1 for e in doc["entry"] if e["resource"]["resourceType"] == "Observation")
    print(f"valid FHIR {fhir.resources.__fhir_version__} Bundle (fhir.resources {fhir.resources.__version__}): "
          f"{n} Observations, status {doc['entry'][0]['resource']['status']}")


if __name__ == "__main__":
    main()
