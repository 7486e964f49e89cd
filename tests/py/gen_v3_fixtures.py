"""Writes one API 3.0 event fixture per `EventContent` member of the official SDK model.

Every object is built from the model class's own field list (`tencentcloud-sdk-python-vod`,
`tencentcloud.vod.v20180717.models`), so a fixture holds exactly the names, nesting and
arrays the model has and nothing else: every field present, one element per array. Values
are deterministic placeholders chosen by field name and type; every `*FileId` gets a
distinct id so tests can find an event by each file it names.

    python gen_v3_fixtures.py OUT_DIR     # rewrites OUT_DIR/<Member>.json

Which EventType each member belongs to is read from the member's documentation ("当事件类型为
X 时有效" / "仅当 EventType 为 X"); the generated file records it as `EventType`.
"""
import json
import re
import sys
from pathlib import Path

from tencentcloud.vod.v20180717 import models

# Members whose documentation names no EventType (the field is marked obsolete).
UNDOCUMENTED_TYPE = {"ReduceMediaBitrateCompleteEvent": "ReduceMediaBitrateComplete"}
MAX_DEPTH = 7


def fields(cls):
    """(name, type text) of a model class, in declaration order."""
    return re.findall(r":type (\w+): (.+)", cls.__init__.__doc__ or "")


def param_doc(cls, name):
    m = re.search(r":param _%s: (.*?)\n\s*:type" % name, cls.__init__.__doc__ or "", re.S)
    return m.group(1) if m else ""


def model_of(type_text):
    m = re.search(r"(?:models\.|list of )(\w+)", type_text)
    return getattr(models, m.group(1), None) if m else None


class Values:
    def __init__(self):
        self.file_ids = 0

    def scalar(self, name, type_text, owner):
        t = type_text.replace("list of ", "")
        if t == "int":
            return 1
        if t == "float":
            return 1.5
        if t == "bool":
            return True
        if name.endswith("FileId") or name == "FileIdSet":
            self.file_ids += 1
            return "52858907842%05d" % self.file_ids
        if name.endswith("TaskId") or name == "TaskId":
            return "1500000000-%s-%s" % (owner, name)
        if name.endswith("Url") or name.endswith("UrlSet") or name.endswith("Urls"):
            return "https://1500000000.vod2.myqcloud.com/a1b2/%s/%s.mp4" % (owner, name)
        if name.endswith("Time"):
            return "2026-11-25T08:00:00Z"
        if name == "Status":
            return "FINISH"
        return "%s.%s" % (owner, name)

    def build(self, cls, depth, path):
        out = {}
        for name, type_text in fields(cls):
            sub = model_of(type_text)
            if sub is not None:
                if depth >= MAX_DEPTH or sub.__name__ in path:
                    value = None  # the model allows null for nested objects
                else:
                    value = self.build(sub, depth + 1, path | {sub.__name__})
            else:
                value = self.scalar(name, type_text, cls.__name__)
            out[name] = [value] if type_text.startswith("list") else value
        return out


def event_type_of(member):
    doc = param_doc(models.EventContent, member)
    m = re.search(r"(?:事件类型为|EventType 为)\s*([A-Za-z0-9]+)", doc)
    return m.group(1) if m else UNDOCUMENTED_TYPE[member]


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for member, type_text in fields(models.EventContent):
        cls = model_of(type_text)
        if cls is None:
            continue  # EventHandle, EventType
        values = Values()
        event = {"EventHandle": "EventHandle-" + member, "EventType": event_type_of(member)}
        event[member] = values.build(cls, 0, {cls.__name__})
        (out / (member + ".json")).write_text(json.dumps(event, indent=2, ensure_ascii=False) + "\n")
        print(member, event["EventType"], len(json.dumps(event)))


if __name__ == "__main__":
    main(sys.argv[1])
