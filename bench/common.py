"""What the benchmark steps share: the export definition and settings."""

from __future__ import annotations

import json
from pathlib import Path

from devtools import sample_data
from shared.exports import load_exports
from shared.settings import Settings

EXPORT = "bench"


def export_definition():
    definition = {
        "name": EXPORT,
        "source": {"container": sample_data.CONTAINER, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
        "mapping": {
            "email": "EMail",
            "firstName": "FirstName",
            "lastName": "LastName",
            "phone": "Telephone",
            "address": "StreetAddress",
            "city": "City",
            "state": "State",
            "postalCode": "PostCode",
            "country": "Country",
            "countryCode": "CountryCode",
            "birthdate": "DateOfBirth",
            "gender": "Gender",
            "customProperties": {"loyalty_tier": "LoyaltyTier", "lifetime_value": "LifetimeValue"},
        },
        "tags": ["ci-vip"],
        "dataTransferAcknowledged": True,
    }
    return load_exports(json.dumps({"exports": [definition]}), "bench")[0]


def settings_for(root: Path, base_url: str, rpm: int) -> Settings:
    return Settings(
        local_storage_root=root,
        omnisend_base_url=base_url,
        omnisend_api_key="bench-key",
        omnisend_requests_per_minute=rpm,
    )
