"""Checks a running Herald admin API against its OpenAPI document.

The document must be valid OpenAPI 3.1. Then every operation is called at least once, on success
and on its usual errors, and for each call:
- the request body must match the documented request schema;
- the status must be one the document lists for that operation;
- a JSON response must match the documented response schema, which forbids undocumented fields.

Usage: check_openapi.py DOCUMENT, with HERALD_API (the base URL), HERALD_ADMIN_TOKEN,
HERALD_READ_TOKEN and HERALD_RECEIVER_URL (an endpoint URL the API accepts) in the environment.
The API must have at least one dead letter, so that the dead-letter schema is exercised.
"""

import json
import os
import sys
import urllib.error
import urllib.request

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:herald:admin-api"


def pointer(*parts):
    """Returns a JSON pointer fragment for the given path parts."""
    escaped = (str(part).replace("~", "~0").replace("/", "~1") for part in parts)
    return "#/" + "/".join(escaped)


class Checker:
    def __init__(self, document):
        self.document = document
        self.registry = Registry().with_resource(
            DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self.base = os.environ["HERALD_API"]
        self.called = set()
        self.problems = []

    def schema_errors(self, location, instance):
        """Validates `instance` against the schema at `location` (a pointer into the document)."""
        validator = Draft202012Validator(
            {"$ref": DOCUMENT_URI + location}, registry=self.registry
        )
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in validator.iter_errors(instance)
        ]

    def resolve(self, obj, location):
        """Follows a local $ref; returns the object and its location."""
        while "$ref" in obj:
            location = obj["$ref"]
            node = self.document
            for part in location.lstrip("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj, location

    def call(self, method, template, path, token, body=None, raw=None, invalid=False):
        """Sends one request and checks it and its response against the document. A request
        marked `invalid` is meant to break the documented request schema."""
        operation = self.document["paths"][template][method.lower()]
        self.called.add(operation["operationId"])
        label = f"{method} {path}"

        if body is not None and not invalid and "requestBody" in operation:
            content = operation["requestBody"]["content"]
            location = pointer("paths", template, method.lower(), "requestBody", "content",
                               "application/json", "schema")
            if "application/json" in content:
                for error in self.schema_errors(location, body):
                    self.problems.append(f"{label}: the test's own request is undocumented: {error}")

        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if token:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()

        responses = operation["responses"]
        if str(status) not in responses:
            self.problems.append(f"{label}: status {status} is not documented ({sorted(responses)})")
            return status, None
        documented, location = self.resolve(
            responses[str(status)],
            pointer("paths", template, method.lower(), "responses", str(status)),
        )
        content = documented.get("content", {})
        if "application/json" not in content:
            if payload:
                self.problems.append(f"{label}: {status} has a body the document does not describe")
            return status, None
        try:
            value = json.loads(payload)
        except ValueError:
            self.problems.append(f"{label}: {status} body is not JSON: {payload[:200]!r}")
            return status, None
        schema_location = location + "/content/application~1json/schema"
        for error in self.schema_errors(schema_location, value):
            self.problems.append(f"{label}: {status} body does not match the document: {error}")
        print(f"ok  {status} {label}")
        return status, value


def main():
    with open(sys.argv[1], encoding="utf-8") as file:
        document = json.load(file)
    validate(document)
    print("the document is valid OpenAPI 3.1")

    checker = Checker(document)
    admin = os.environ["HERALD_ADMIN_TOKEN"]
    read = os.environ["HERALD_READ_TOKEN"]
    url = os.environ["HERALD_RECEIVER_URL"]
    call = checker.call

    call("GET", "/healthz", "/healthz", None)
    call("GET", "/readyz", "/readyz", None)
    status, served = call("GET", "/v1/openapi.json", "/v1/openapi.json", None)
    if served != document:
        checker.problems.append("GET /v1/openapi.json does not serve the committed document")

    subscription = {
        "id": "openapi-check",
        "description": "created by the OpenAPI check",
        "url": url + "?token=redacted-in-output",
        "event_types": ["payment.*", "kyc.approved"],
        "timeout_ms": 5000,
        "rate_limit_per_second": 10,
        "rate_limit_burst": 5,
        "max_concurrency": 2,
        "filter": [{"path": "/data/amount", "gte": "10000.00"}, {"path": "/data/currency", "in": ["CHF", "EUR"]}],
        "headers": {"X-Tenant": "acme-bank"},
    }
    collection = "/v1/subscriptions"
    item = "/v1/subscriptions/{id}"
    one = "/v1/subscriptions/openapi-check"
    call("POST", collection, collection, admin, subscription)
    call("POST", collection, collection, admin, subscription)  # 409
    call("POST", collection, collection, admin, {"event_types": []}, invalid=True)  # 400
    call("POST", collection, collection, read, {"url": url, "event_types": ["*"]})  # 403
    call("POST", collection, collection, None, {"url": url, "event_types": ["*"]})  # 401
    call("POST", collection, collection, admin, None, raw=b" " * (300 * 1024))  # 413
    call("POST", collection, collection, admin, {"url": url, "event_types": ["*"]})  # generated id
    call("GET", collection, collection + "?limit=1", read)
    status, page = call("GET", collection, collection + "?limit=1", read)
    if page and page.get("next_after"):
        call("GET", collection, collection + f"?limit=1&after={page['next_after']}", read)
    call("GET", collection, collection + "?limit=0", read)  # 400
    call("GET", item, one, read)
    call("GET", item, "/v1/subscriptions/nobody", read)  # 404
    call("PATCH", item, one, admin, {"description": "changed", "max_concurrency": None})
    call("PATCH", item, one, admin, {"timeout_ms": 0}, invalid=True)  # 400
    call("PATCH", item, "/v1/subscriptions/nobody", admin, {"description": "x"})  # 404
    call("POST", item + "/disable", one + "/disable", admin)
    call("POST", item + "/test", one + "/test", admin)  # 409: disabled
    call("POST", item + "/enable", one + "/enable", admin)
    call("POST", item + "/test", one + "/test", admin)
    call("POST", item + "/rotate-secret", one + "/rotate-secret", admin, {"overlap": "2h"})
    call("POST", item + "/rotate-secret", one + "/rotate-secret", admin, {"overlap": "forever"})  # 400
    call("GET", "/v1/dead-letters", "/v1/dead-letters?limit=2", read)
    call("GET", "/v1/dead-letters", "/v1/dead-letters?reason=lost", read)  # 400
    call("POST", "/v1/dead-letters/redrive", "/v1/dead-letters/redrive", admin,
         {"subscription_id": "nobody", "dry_run": True})
    call("POST", "/v1/dead-letters/redrive", "/v1/dead-letters/redrive", read, {"dry_run": True})  # 403
    call("POST", "/v1/dead-letters/redrive", "/v1/dead-letters/redrive", admin, {})  # 400: no filter
    call("DELETE", item, one, admin)
    call("DELETE", item, one, admin)  # 404

    documented = {
        operation["operationId"]
        for methods in document["paths"].values()
        for name, operation in methods.items()
        if name != "parameters"
    }
    for missing in sorted(documented - checker.called):
        checker.problems.append(f"operation {missing} was never called")

    if checker.problems:
        print("\n".join(["", "problems:"] + checker.problems))
        sys.exit(1)
    print(f"all {len(documented)} operations match the document")


if __name__ == "__main__":
    main()
