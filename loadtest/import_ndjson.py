#!/usr/bin/env python3
"""Writes a region's NDJSON extract for `nrl import` to stdout: POINTERS pointers of one region,
PER_PATIENT per patient, patients walking the NHS test range (999 000 0000 onwards, valid Modulus 11
check digits only), in the canonical protobuf JSON mapping, each with its own producer_reference so
a re-run is idempotent.

    python3 loadtest/import_ndjson.py 1000000 > extract.ndjson          # QWO, 3 per patient
    python3 loadtest/import_ndjson.py 200000 --region QF7 --per-patient 5 > extract.ndjson
"""
import argparse
import json
import sys

CUSTODIANS = ["RR8", "RP5", "RA7", "RJ1", "R0A", "Y05868"]
TYPES = ["736253002", "887701000000100", "861421000000109", "736373009"]


def nhs_numbers(first_prefix=999_000_000):
    """Valid NHS numbers from the given 9-digit prefix upwards."""
    prefix = first_prefix
    while True:
        digits = [int(d) for d in str(prefix)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
        check = 0 if check == 11 else check
        if check != 10:
            yield f"{prefix}{check}"
        prefix += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pointers", type=int)
    parser.add_argument("--per-patient", type=int, default=3)
    parser.add_argument("--region", default="QWO")
    args = parser.parse_args()
    out = sys.stdout
    patients = nhs_numbers()
    written = 0
    while written < args.pointers:
        number = next(patients)
        for j in range(min(args.per_patient, args.pointers - written)):
            i = written
            region = args.region
            custodian = CUSTODIANS[i % len(CUSTODIANS)]
            reference = f"IMPORT-{number}-{j}"
            pointer = {
                "nhsNumber": number,
                "region": region,
                "custodian": custodian,
                "type": TYPES[i % len(TYPES)],
                "content": [{
                    "url": f"https://{region.lower()}.records.example.nhs.uk/{custodian.lower()}/documents/{reference}",
                    "contentType": "application/pdf",
                    "format": "urn:nhs-ic:unstructured",
                    "retrievalMechanism": "RETRIEVAL_MECHANISM_DIRECT",
                    "stability": "STABILITY_STATIC",
                }],
                "documentDate": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z",
                "producerReference": reference,
            }
            out.write(json.dumps(pointer, separators=(",", ":")))
            out.write("\n")
            written += 1


if __name__ == "__main__":
    main()
