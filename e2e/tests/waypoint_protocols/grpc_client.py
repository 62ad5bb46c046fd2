"""The gRPC client of the waypoint protocol tests: `grpc_client.py TARGET CALLS...`, each call
`echo:<text>[:<header>=<value>]`, `fail:<text>` or `count:<n>`, one channel (one HTTP/2 connection) for all.
Prints one JSON object per call: the status code name, the messages, and the trailing metadata."""

import json
import sys

import grpc


def main():
    target = sys.argv[1]
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    unary = {m: channel.unary_unary("/ambit.test.Echo/" + m) for m in ("Echo", "Fail")}
    stream = channel.unary_stream("/ambit.test.Echo/Count")
    for spec in sys.argv[2:]:
        kind, _, rest = spec.partition(":")
        text, _, header = rest.partition(":")
        metadata = [tuple(header.split("=", 1))] if header else None
        out = {"call": spec}
        try:
            if kind == "count":
                call = stream(text.encode(), timeout=10, metadata=metadata)
                out["messages"] = [m.decode() for m in call]
            else:
                resp, call = unary["Echo" if kind == "echo" else "Fail"].with_call(
                    text.encode(), timeout=10, metadata=metadata
                )
                out["messages"] = [resp.decode()]
            out["code"] = call.code().name
            out["trailers"] = dict(call.trailing_metadata() or ())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
            out["trailers"] = dict(e.trailing_metadata() or ())
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
