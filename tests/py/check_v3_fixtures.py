"""Checks API 3.0 event JSON against the official SDK model: every key of every object must be
a field of the model class at that place (`tencentcloud-sdk-python-vod`,
`tencentcloud.vod.v20180717.models.EventContent` and the classes it references).

    python check_v3_fixtures.py FILE...

A file holds one event, or a PullEvents answer (`{"Response": {"EventSet": [...]}}`). The
model's own `_deserialize` walks the JSON and warns about every key it does not know; each
such warning is printed with the file's name, and the exit status is 1 if there was any.
"""
import json
import sys
import warnings

from tencentcloud.vod.v20180717 import models


def events_of(document):
    response = document.get("Response") if isinstance(document, dict) else None
    if isinstance(response, dict):
        return response.get("EventSet") or []
    return [document]


def main(paths):
    failures = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
        for event in events_of(document):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                models.EventContent()._deserialize(event)
            for w in caught:
                failures += 1
                print("%s: %s" % (path, w.message))
    print("checked %d file(s), %d unknown key set(s)" % (len(paths), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
