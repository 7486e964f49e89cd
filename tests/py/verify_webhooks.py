#!/usr/bin/env python3
"""Verify webhook signatures with the official Standard Webhooks library
(`standardwebhooks` on PyPI), not with vod-eventd's own code.

Reads one JSON object on stdin: {"secret": "whsec_...", "messages": [{"headers": {...}, "body": "..."}]}
Prints the number of messages verified; exits 1 (naming the first failure) if any fails.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    request = json.load(sys.stdin)
    hook = Webhook(request["secret"])
    for i, message in enumerate(request["messages"]):
        try:
            hook.verify(message["body"], message["headers"])
        except Exception as e:  # the library raises WebhookVerificationError
            print(f"message {i} failed verification: {e}", file=sys.stderr)
            return 1
    print(len(request["messages"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
