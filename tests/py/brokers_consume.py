"""An independent consumer for the broker handler tests: reads every message the daemon
published, with the broker's official Python client, and prints one JSON line per message:
{"id": <delivery id as the broker carries it>, "body_b64": <body, base64>, "meta": {...}}.

    brokers_consume.py amqp  <url> <queue>         basic.get until the queue is empty (acked)
    brokers_consume.py nats  <url> <stream>        every message in the stream, by sequence
    brokers_consume.py redis <url> <stream key>    XRANGE - + over the whole stream

and, to set a broker up before a test:

    brokers_consume.py amqp-prepare <url> <queue>  topic exchange `vod`, durable queue bound to `vod.#`
    brokers_consume.py nats-prepare <url> <stream> a file stream taking `vod.>`
"""

import asyncio
import base64
import json
import sys


def out(msg_id, body, meta):
    print(json.dumps({"id": msg_id, "body_b64": base64.b64encode(body).decode(), "meta": meta}))


def amqp(url, queue):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
        out(props.message_id, body, {"headers": headers, "delivery_mode": props.delivery_mode,
                                     "content_type": props.content_type, "routing_key": method.routing_key})
    conn.close()


def amqp_prepare(url, queue):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("vod", exchange_type="topic", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, "vod", routing_key="vod.#")
    conn.close()


async def nats_prepare(url, stream):
    import nats as natslib

    nc = await natslib.connect(url)
    await nc.jetstream().add_stream(name=stream, subjects=["vod.>"])
    await nc.close()


async def nats(url, stream):
    import nats as natslib

    nc = await natslib.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except natslib.js.errors.NotFoundError:
            continue
        headers = dict(msg.headers or {})
        out(headers.get("Nats-Msg-Id"), msg.data, {"headers": headers, "subject": msg.subject, "seq": seq})
    await nc.close()


def redis_(url, key):
    import redis

    r = redis.Redis.from_url(url)
    last = "-"
    while True:
        entries = r.xrange(key, min=last, max="+", count=1000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            break
        for entry_id, fields in entries:
            fields = {k.decode(): v for k, v in fields.items()}
            meta = {k: v.decode() for k, v in fields.items() if k != "body"}
            meta["entry"] = entry_id.decode()
            out(fields["id"].decode(), fields["body"], meta)
        last = entries[-1][0].decode()


if __name__ == "__main__":
    kind, url, name = sys.argv[1:4]
    if kind == "amqp":
        amqp(url, name)
    elif kind == "nats":
        asyncio.run(nats(url, name))
    elif kind == "amqp-prepare":
        amqp_prepare(url, name)
    elif kind == "nats-prepare":
        asyncio.run(nats_prepare(url, name))
    elif kind == "redis":
        redis_(url, name)
    else:
        sys.exit(f"unknown broker {kind}")
