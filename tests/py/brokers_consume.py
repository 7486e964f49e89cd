"""An independent consumer for the broker handler tests: reads every message the daemon
published, with the broker's official Python client, and prints one JSON line per message:
{"id": <delivery id as the broker carries it>, "body_b64": <body, base64>, "meta": {...}}.

    brokers_consume.py amqp  <url> <queue>         basic.get until the queue is empty (acked)
    brokers_consume.py nats  <url> <stream>        every message in the stream, by sequence
    brokers_consume.py redis <url> <stream key>    XRANGE - + over the whole stream

and, to set a broker up before a test:

    brokers_consume.py amqp-prepare <url> <queue>  topic exchange `vod`, durable queue bound to `vod.#`
    brokers_consume.py nats-prepare <url> <stream> a file stream taking `vod.>`

and, for the handler contract (subjects `contract.>`, exchange `contract`):

    brokers_consume.py nats-contract <url> <ok|full|tiny>  stream CONTRACT as it is, full (max 1 message,
                                                          discard new, holding one) or with 10-byte messages
    brokers_consume.py amqp-contract <url> <ok|full|none>  exchange `contract` routed to a queue, to a queue
                                                          at its length limit (reject-publish), or nowhere
"""

import asyncio
import base64
import json
import sys


def amqp_connect(url):
    """A connection, retried for up to 90 s: a RabbitMQ node takes TCP connections a little
    before it takes logins, and several booting at once on a small machine are slow."""
    import time

    import pika

    deadline = time.monotonic() + 90
    while True:
        try:
            return pika.BlockingConnection(pika.URLParameters(url))
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def out(msg_id, body, meta):
    print(json.dumps({"id": msg_id, "body_b64": base64.b64encode(body).decode(), "meta": meta}))


def amqp(url, queue):
    import pika

    conn = amqp_connect(url)
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

    conn = amqp_connect(url)
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


async def nats_contract(url, mode):
    import nats as natslib
    from nats.js.api import DiscardPolicy

    nc = await natslib.connect(url)
    js = nc.jetstream()
    try:
        await js.delete_stream("CONTRACT")
    except natslib.js.errors.NotFoundError:
        pass
    if mode == "full":
        await js.add_stream(name="CONTRACT", subjects=["contract.>"], max_msgs=1, discard=DiscardPolicy.NEW)
        await js.publish("contract.fill", b"x")
    elif mode == "tiny":
        await js.add_stream(name="CONTRACT", subjects=["contract.>"], max_msg_size=10)
    else:
        await js.add_stream(name="CONTRACT", subjects=["contract.>"])
    await nc.close()


def amqp_contract(url, mode):
    import pika

    conn = amqp_connect(url)
    ch = conn.channel()
    ch.exchange_declare("contract", exchange_type="topic", durable=True)
    ch.queue_declare("contract-ok", durable=True)
    ch.queue_declare("contract-full", durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    for queue, wanted in (("contract-ok", mode == "ok"), ("contract-full", mode == "full")):
        if wanted:
            ch.queue_bind(queue, "contract", routing_key="contract.#")
        else:
            ch.queue_unbind(queue, "contract", routing_key="contract.#")
    conn.close()


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
    elif kind == "amqp-ping":
        amqp_connect(url).close()
    elif kind == "nats-contract":
        asyncio.run(nats_contract(url, name))
    elif kind == "amqp-contract":
        amqp_contract(url, name)
    elif kind == "redis":
        redis_(url, name)
    else:
        sys.exit(f"unknown broker {kind}")
