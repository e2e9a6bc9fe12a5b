"""An independent Server-Sent Events client for the event-stream tests: the standard library's
http.client and the SSE field rules of the HTML spec, no code shared with the gateway.

usage: sse_client.py HOST:PORT PATH KEY LAST_EVENT_ID COUNT
Prints one JSON line per thing read: first {"status", "content_type"} (and "body" when not 200),
then {"comment"} for each comment line and {"id", "event", "data"} for each event; exits after
COUNT events (closing the connection) or when the server ends the stream ({"end": true}).
"""

import http.client
import json
import sys


def main():
    addr, path, key, last_id, count = sys.argv[1:6]
    host, port = addr.rsplit(":", 1)
    count = int(count)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = "Bearer " + key
    if last_id:
        headers["Last-Event-ID"] = last_id
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    first = {"status": resp.status, "content_type": resp.getheader("Content-Type")}
    if resp.status != 200:
        first["body"] = resp.read().decode("utf-8", "replace")
        print(json.dumps(first), flush=True)
        return
    print(json.dumps(first), flush=True)
    got = 0
    event_id, event_type, data = None, None, []
    while got < count:
        raw = resp.readline()
        if not raw:
            print(json.dumps({"end": True}), flush=True)
            break
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                print(json.dumps({"id": event_id, "event": event_type or "message",
                                  "data": "\n".join(data)}), flush=True)
                got += 1
            event_type, data = None, []
            continue
        if line.startswith(":"):
            print(json.dumps({"comment": line[1:].strip()}), flush=True)
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "id":
            event_id = value
        elif field == "event":
            event_type = value
        elif field == "data":
            data.append(value)
    conn.close()


main()
