"""Checks Herald's webhook signatures against the official Standard Webhooks library for Python.

Modes:
  vectors FILE  every vector's signature equals the library's signature of the same message
  verify        reads requests signed by Herald (JSON lines on stdin) and verifies each with the
                library; a line with "tampered": true must fail verification
  sign          reads messages (JSON lines on stdin), signs each with the library at the current
                time, and prints the requests for Herald to verify

A request or message is {"secret", "id", "timestamp", "body_base64", "signature"}, with
"secrets" (a list) in place of "secret" for messages to sign with several secrets.
"""

import base64
import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def body_of(entry):
    return base64.b64decode(entry["body_base64"])


def check_vectors(path):
    with open(path, encoding="utf-8") as file:
        vectors = json.load(file)["vectors"]
    failures = 0
    for vector in vectors:
        signed_at = datetime.fromtimestamp(vector["timestamp"], tz=timezone.utc)
        expected = Webhook(vector["secret"]).sign(vector["id"], signed_at, body_of(vector))
        if expected != vector["signature"]:
            failures += 1
            print(f"vector {vector['name']}: the library signs {expected}, the file says {vector['signature']}")
        else:
            print(f"ok  vector {vector['name']}")
    return failures


def verify_requests():
    failures = 0
    for line in sys.stdin:
        request = json.loads(line)
        headers = {
            "webhook-id": request["id"],
            "webhook-timestamp": str(request["timestamp"]),
            "webhook-signature": request["signature"],
        }
        try:
            Webhook(request["secret"]).verify(body_of(request), headers, json_parse=False)
            verified = True
        except WebhookVerificationError:
            verified = False
        expected = not request.get("tampered", False)
        if verified != expected:
            failures += 1
            print(f"request {request['id']}: verified={verified}, expected {expected}")
        else:
            print(f"ok  request {request['id']} verified={verified}")
    return failures


def sign_messages():
    now = datetime.now(tz=timezone.utc)
    for line in sys.stdin:
        message = json.loads(line)
        signatures = [
            Webhook(secret).sign(message["id"], now, body_of(message)) for secret in message["secrets"]
        ]
        print(json.dumps({
            "id": message["id"],
            "timestamp": int(now.timestamp()),
            "body_base64": message["body_base64"],
            "signature": " ".join(signatures),
        }))
    return 0


def main():
    mode = sys.argv[1]
    if mode == "vectors":
        failures = check_vectors(sys.argv[2])
    elif mode == "verify":
        failures = verify_requests()
    elif mode == "sign":
        failures = sign_messages()
    else:
        print(f"unknown mode {mode!r}; use vectors, verify or sign")
        failures = 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
