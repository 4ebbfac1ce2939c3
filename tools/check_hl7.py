#!/usr/bin/env python3
"""Check a leukoscope report.hl7 with an independent HL7 v2 parser.

Parses the message with PyPI `hl7` (python-hl7), then checks what an LIS
relies on: an ORU^R01 of HL7 2.5.1 with a control ID; MSH, SFT (the software
and model versions), PID (the sample ID as an accession number), OBR (the
differential panel, LOINC 69738-3), OBX results; every result numeric, with
UCUM units, LOINC codes with a valid check digit, and the status P
(preliminary) or F (final, then the reviewer in OBR-32) in OBR-25 and every
OBX-11; the blasts (LOINC 26446-5) present. With --fhir, every LOINC result
of the report.fhir.json beside it has the same value, unit and status in the
message, and the other way round. Exit 0 when valid, 1 with the reasons when
not, 2 when the parser itself is missing (never a silent pass).

Installed by .ci/run into tools/.venv-fhir (tools/requirements-fhir.txt);
run by the Rust tests (tests/common/mod.rs validate_hl7).

usage: check_hl7.py REPORT.hl7 [--status P|F] [--sample ID] [--fhir report.fhir.json]
"""
import argparse
import json
import re
import sys

try:
    import hl7
except ImportError as e:  # a missing parser is a failure, loudly
    print(f"FATAL: hl7 is not installed ({e}); "
          "install it: python3 -m venv tools/.venv-fhir && "
          "tools/.venv-fhir/bin/pip install -r tools/requirements-fhir.txt", file=sys.stderr)
    sys.exit(2)

from check_fhir import LOINC, loinc_check_digit_ok  # noqa: E402  (the same LOINC check as the FHIR one)

FHIR_STATUS = {"preliminary": "P", "final": "F"}


def field(seg, n, comp=1):
    """Field n (component comp) of a segment, unescaped by the parser; '' if absent."""
    return seg.extract_field(field_num=n, component_num=comp)


def check(text, want_status=None, sample=None, bundle=None):
    errors = []
    if "\n" in text:
        errors.append("a line feed in the message: segments end in CR only")
    try:
        msg = hl7.parse(text)
    except Exception as e:  # noqa: BLE001  any parse failure is the finding
        return [f"not an HL7 v2 message: {e}"]
    names = [str(s[0]) for s in msg]
    if names[:3] != ["MSH", "SFT", "PID"] or "OBR" not in names:
        errors.append(f"segments {names}: expected MSH, SFT, PID, OBR, then OBX")
    msh = msg.segment("MSH")
    if (msg["MSH.F9.R1.C1"], msg["MSH.F9.R1.C2"]) != ("ORU", "R01"):
        errors.append(f"MSH-9 {msh[9]}, expected ORU^R01")
    if str(msg["MSH.F12"]) != "2.5.1":
        errors.append(f"MSH-12 version {msh[12]}, expected 2.5.1")
    if not str(msg["MSH.F10"]):
        errors.append("no message control ID (MSH-10)")
    if not re.fullmatch(r"\d{14}[+-]\d{4}", str(msg["MSH.F7"])):
        errors.append(f"MSH-7 {msg['MSH.F7']} is not a time stamp")
    sft = msg.segment("SFT")
    if field(sft, 1) != "leukoscope" or not re.fullmatch(r"\d+\.\d+\.\d+.*", field(sft, 2)):
        errors.append(f"SFT does not name the software and its version: {sft}")
    if "sha256:" not in field(sft, 4):
        errors.append(f"SFT-4 does not name the model: {field(sft, 4)!r}")
    pid = msg.segment("PID")
    if sample is not None and (field(pid, 3), msg["PID.F3.R1.C5"]) != (sample, "ACSN"):
        errors.append(f"PID-3 {field(pid, 3)!r}, expected the sample ID {sample!r} as ACSN")
    obr = msg.segment("OBR")
    if (field(obr, 4, 1), field(obr, 4, 3)) != ("69738-3", "LN"):
        errors.append(f"OBR-4 {obr[4]}, expected LOINC 69738-3")
    status = field(obr, 25)
    if status not in ("P", "F"):
        errors.append(f"OBR-25 result status {status!r}, expected P or F")
    if want_status and status != want_status:
        errors.append(f"OBR-25 result status {status!r}, expected {want_status!r}")
    if status == "F" and not field(obr, 32):
        errors.append("final result without the reviewer (OBR-32)")
    results = {}
    for obx in msg.segments("OBX"):
        code, system = field(obx, 3, 1), field(obx, 3, 3)
        value, unit = field(obx, 5), field(obx, 6, 1)
        if field(obx, 2) != "NM":
            errors.append(f"OBX {code}: value type {field(obx, 2)!r}, expected NM")
        try:
            v = float(value)
        except ValueError:
            errors.append(f"OBX {code}: value {value!r} is not a number")
            continue
        if field(obx, 6, 3) != "UCUM":
            errors.append(f"OBX {code}: unit {obx[6]} not UCUM")
        if field(obx, 11) != status:
            errors.append(f"OBX {code}: status {field(obx, 11)!r} differs from OBR-25 {status!r}")
        if system == "LN":
            if not loinc_check_digit_ok(code):
                errors.append(f"LOINC code {code} has a wrong check digit")
            if unit != "%" or not 0 <= v <= 100:
                errors.append(f"OBX {code}: {value} {unit} is not a percentage")
            if code in results:
                errors.append(f"OBX {code} twice")
            results[code] = (v, unit)
    if "26446-5" not in results:
        errors.append("no Blasts/100 leukocytes (LOINC 26446-5) result")
    if bundle is not None:
        fhir = {}
        report = bundle["entry"][0]["resource"]
        if FHIR_STATUS.get(report.get("status")) != status:
            errors.append(f"FHIR status {report.get('status')!r}, HL7 status {status!r}")
        for e in bundle["entry"]:
            r = e["resource"]
            if r["resourceType"] != "Observation":
                continue
            for c in r["code"].get("coding", []):
                if c.get("system") == LOINC:
                    fhir[c["code"]] = (r["valueQuantity"]["value"], r["valueQuantity"]["code"])
        if set(fhir) != set(results):
            errors.append(f"LOINC codes: FHIR {sorted(fhir)}, HL7 {sorted(results)}")
        for code in set(fhir) & set(results):
            (fv, fu), (hv, hu) = fhir[code], results[code]
            if abs(fv - hv) > 1e-9 or fu != hu:
                errors.append(f"{code}: FHIR {fv} {fu}, HL7 {hv} {hu}")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("message")
    ap.add_argument("--status", choices=["P", "F"])
    ap.add_argument("--sample")
    ap.add_argument("--fhir")
    a = ap.parse_args()
    with open(a.message, encoding="utf-8", newline="") as f:
        text = f.read()
    bundle = None
    if a.fhir:
        with open(a.fhir, encoding="utf-8") as f:
            bundle = json.load(f)
    errors = check(text, a.status, a.sample, bundle)
    if errors:
        for e in errors:
            print(f"INVALID {a.message}: {e}", file=sys.stderr)
        sys.exit(1)
    n = len(hl7.parse(text).segments("OBX"))
    print(f"valid HL7 v2.5.1 ORU^R01 (python-hl7): {n} OBX, status {hl7.parse(text)['OBR.F25']}")


if __name__ == "__main__":
    main()
