"""Validates an OpenAPI document with openapi-spec-validator (tests/openapi/requirements.txt).

Usage: python3 tests/openapi/validate.py gen/openapi.json
"""

import json
import sys

from openapi_spec_validator import validate

with open(sys.argv[1], encoding="utf-8") as f:
    document = json.load(f)
validate(document)
print(f"valid OpenAPI {document['openapi']} document with {len(document['paths'])} paths")
