"""Generate realistic Customer Insights segment exports (CDM folders) for the sample, tests and benchmarks.

    python -m devtools.sample_data --rows 300 --out samples/data         # the bundled sample
    python -m devtools.sample_data --rows 1000000 --out bench/out/data   # the benchmark's 1M rows

The output is a LocalObjectStore root: ``<out>/ciexports/CustomerInsights_<guid>/OmnisendFeed/model.json`` and
``.../VipCustomers/<YYYY>/<MM>/<DD>/<HHMM>/VipCustomers_<n>.csv`` (headerless, CDM defaults). Deterministic for
a given seed. The small sample deliberately contains the messy cases real exports have: invalid emails,
duplicates differing only in case, a UTF-8 BOM, CRLF line ends, quoted commas and line breaks, bad optional
fields (country codes, birthdates, phones).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import unicodedata
from pathlib import Path

CONTAINER = "ciexports"
EXPORT_PATH = "CustomerInsights_4f1c2a9e-7d3b-4e51-9a0c-2b8e6f3d1c77/OmnisendFeed"
TABLE = "VipCustomers"
COLUMNS = (
    "CustomerId", "FirstName", "LastName", "EMail", "Telephone", "StreetAddress", "City", "State",
    "PostCode", "Country", "CountryCode", "DateOfBirth", "Gender", "LoyaltyTier", "LifetimeValue",
)
FIRST = ("Anna", "Ben", "Chloé", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Karin", "Luca",
         "Maja", "Nils", "Olga", "Pavel", "Rita", "Sven", "Tomás", "Uma", "Vera", "Wim", "Yusuf", "Zoë")
LAST = ("Andersen", "Becker", "Costa", "Dvořák", "Eriksen", "Fischer", "García", "Horváth", "Ivanova", "Jensen",
        "Kowalski", "Lindqvist", "Müller", "Novak", "O'Brien", "Petrov", "Rossi", "Schmidt", "Tanaka", "Weber")
CITIES = (("Vilnius", "", "LT", "Lithuania", "01103"), ("Berlin", "BE", "DE", "Germany", "10115"),
          ("Austin", "TX", "US", "United States", "73301"), ("Lyon", "", "FR", "France", "69001"),
          ("Oslo", "", "NO", "Norway", "0150"), ("Toronto", "ON", "CA", "Canada", "M5H 2N2"))
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "shop.example")
TIERS = ("gold", "silver", "platinum")


def contact_row(i: int, rnd: random.Random) -> list[str]:
    first, last = rnd.choice(FIRST), rnd.choice(LAST)
    city, state, code, country, postcode = rnd.choice(CITIES)
    # Mailbox names are ASCII in practice: fold accents (Chloé → chloe) as shops usually do.
    local = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore").decode().lower()
    local = local.replace("'", "").replace(" ", "")
    email = f"{local}.{i}@{rnd.choice(DOMAINS)}"
    dob = f"{rnd.randint(1950, 2005)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
    phone = f"+3706{rnd.randint(1000000, 9999999)}" if rnd.random() < 0.6 else ""
    return [
        f"cid-{i:08d}", first, last, email, phone, f"{rnd.randint(1, 200)} Main Street", city, state, postcode,
        country, code, dob, rnd.choice(("f", "m", "")), rnd.choice(TIERS), f"{rnd.uniform(10, 5000):.2f}",
    ]


def model_json(partitions: list[str] | None = None) -> dict:
    entity = {
        "$type": "LocalEntity",
        "name": TABLE,
        "attributes": [{"name": c, "dataType": "string"} for c in COLUMNS],
    }
    if partitions:
        entity["partitions"] = [{"name": Path(p).stem, "location": p} for p in partitions]
    return {"name": "OmnisendFeed", "version": "1.0", "modifiedTime": "2026-11-28T02:05:41Z", "entities": [entity]}


def write_export(out: Path, rows: int, *, seed: int = 7, run: str = "2026/11/28/0205", partitions: int = 1,
                 messy: bool = True, changed_fraction: float = 0.0, drop_fraction: float = 0.0) -> Path:
    """Write one run folder with ``rows`` data rows split over ``partitions`` files. Returns the export root.

    ``changed_fraction`` alters that share of rows (a new loyalty tier) relative to the same seed; ``drop_fraction``
    leaves that share out (members who left the segment) — used for incremental-run benchmarks and tests.
    """
    rnd = random.Random(seed)
    change_rnd = random.Random(seed + 1)
    root = out / CONTAINER / EXPORT_PATH
    run_dir = root / TABLE / run
    run_dir.mkdir(parents=True, exist_ok=True)
    (root / "model.json").write_text(json.dumps(model_json(), indent=2), encoding="utf-8")
    per_part = -(-rows // partitions)
    files = []
    written = 0
    for part in range(1, partitions + 1):
        path = run_dir / f"{TABLE}_{part}.csv"
        files.append(path)
        with open(path, "w", encoding="utf-8-sig" if messy and part == 1 else "utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\r\n" if messy else "\n", quoting=csv.QUOTE_MINIMAL)
            previous_email = ""
            for i in range(written, min(rows, written + per_part)):
                row = contact_row(i, rnd)
                if change_rnd.random() < changed_fraction:
                    row[13] = "diamond"
                if drop_fraction and change_rnd.random() < drop_fraction:
                    continue
                if messy:
                    row = _mess(i, row, previous_email)
                if i % 97 not in (5, 6, 7):
                    previous_email = row[3]
                writer.writerow(row)
        written = min(rows, written + per_part)
    return root


def _mess(i: int, row: list[str], previous_email: str) -> list[str]:
    """Every so often, the kinds of dirt real exports carry."""
    if i % 97 == 5:
        row[3] = "not-an-email"
    elif i % 97 == 6:
        row[3] = ""
    elif i % 97 == 7:
        # The previous row's person again (two profiles CI did not merge), differing in case and spaces.
        row[3] = "  " + previous_email.upper() + " "
    elif i % 97 == 8:
        row[5] = "Flat 3, \"The Old Mill\"\nRiver Road"  # quoted comma, doubled quotes, line break
    elif i % 97 == 9:
        row[10] = "XX"  # not an ISO country: dropped, contact kept
        row[11] = "31/02/1990"  # not a date: dropped
    elif i % 97 == 10:
        row[4] = "12345"  # not E.164: dropped
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("samples/data"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--run", default="2026/11/28/0205", help="run folder YYYY/MM/DD/HHMM")
    parser.add_argument("--clean", action="store_true", help="no messy rows (for benchmarks)")
    parser.add_argument("--changed-fraction", type=float, default=0.0)
    args = parser.parse_args()
    root = write_export(args.out, args.rows, seed=args.seed, run=args.run, partitions=args.partitions,
                        messy=not args.clean, changed_fraction=args.changed_fraction)
    print(root)


if __name__ == "__main__":
    main()
