"""Splits a replica profile into the parts of the system its samples were in.

Usage:
    perf record -e cpu-clock -F 199 --call-graph dwarf,16384 -p <replica pids> -o perf.data -- sleep 4
    perf script -i perf.data -F comm,tid,ip,sym > perf.txt
    python3 classify_profile.py perf.txt

A sample counts for the first category (in the order below) that any frame of its stack names, so a sample
inside SHA-256 called by the journal counts as journal, and one called by a MAC check as API.
"""
import collections
import sys

CATEGORIES = [
    ("journal", ["pbft_node::durable::Journal", "pbft_store::", "redb::"]),
    ("ed25519 verify", ["verify_strict", "verify_batch", "VerifyingKey", "ed25519_zebra"]),
    ("ed25519 sign", ["SigningKey", "ed25519_dalek::signing"]),
    ("peer transport (tls/frames)", ["pbft_node::transport", "pbft_node::peer", "tokio_rustls", "rustls::"]),
    ("grpc stream/api", ["pbft_node::submit_stream", "pbft_node::api", "pbft_node::grpc", "h2::", "tonic::", "hyper::"]),
    ("core step", ["pbft_core::"]),
    ("runtime task", ["pbft_node::runtime"]),
    ("crypto other", ["pbft_crypto::"]),
    ("tokio scheduler", ["tokio::runtime::scheduler", "tokio::runtime::park", "tokio::runtime::time"]),
]


def samples(path):
    current = []
    for line in open(path):
        if not line.strip():
            if current:
                yield current
            current = []
        else:
            current.append(line)
    if current:
        yield current


def main():
    counts = collections.Counter()
    total = 0
    for sample in samples(sys.argv[1]):
        total += 1
        text = "".join(sample)
        name = next((n for n, keys in CATEGORIES if any(k in text for k in keys)), "other")
        counts[name] += 1
    print(f"{total} samples")
    for name, count in counts.most_common():
        print(f"{100 * count / total:5.1f}% {name}")


if __name__ == "__main__":
    main()
