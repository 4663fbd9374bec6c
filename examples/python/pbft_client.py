#!/usr/bin/env python3
"""A PBFT client in Python, built from proto/pbft.proto alone.

It reads a testnet made by `pbft testnet` (cluster.toml, client-N.toml and its key), signs a REQUEST with the
client's ed25519 key, submits it to every replica through gRPC `ReplicaApi.Submit`, and accepts the result once
f+1 distinct replicas answered with matching REPLYs whose signatures verify with their public keys from
cluster.toml. It puts a key, reads it back, and prints every replica's `GetStatus`.

The gRPC stubs are generated at run time with grpcio-tools into a temporary directory, so nothing generated is
kept in the repository.

    python pbft_client.py --testnet DIR [--client 0] [--key K] [--value V]
"""

import argparse
import importlib
import pathlib
import queue
import sys
import tempfile
import time

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_PROTO = HERE.parent.parent / "proto" / "pbft.proto"


def generate_stubs(proto: pathlib.Path, out: str):
    """Compiles `proto` with grpcio-tools into `out` and imports the generated modules."""
    from grpc_tools import protoc

    include = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto),
        ]
    )
    if code != 0:
        sys.exit(f"error: protoc could not compile {proto}")
    sys.path.insert(0, out)
    stem = proto.stem
    return importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc")


class Testnet:
    """A client's configuration: its id and key, and the cluster's replicas (keys and gRPC addresses)."""

    def __init__(self, client_file: pathlib.Path):
        with open(client_file, "rb") as f:
            client = tomllib.load(f)
        base = client_file.parent
        self.id = int(client["id"])
        seed = bytes.fromhex((base / client["key_file"]).read_text().strip())
        self.key = Ed25519PrivateKey.from_private_bytes(seed)
        with open(base / client["cluster_file"], "rb") as f:
            cluster = tomllib.load(f)
        replicas = sorted(cluster["replicas"], key=lambda r: r["id"])
        self.addresses = [r["api_address"] for r in replicas]
        self.public_keys = [
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(r["public_key"])) for r in replicas
        ]
        self.n = len(replicas)
        self.f = (self.n - 1) // 3


class Client:
    def __init__(self, pb, pb_grpc, testnet: Testnet, timeout: float):
        self.pb = pb
        self.net = testnet
        self.timeout = timeout
        self.channels = [grpc.insecure_channel(a) for a in testnet.addresses]
        self.stubs = [pb_grpc.ReplicaApiStub(c) for c in self.channels]
        self.last_timestamp = 0

    def close(self):
        for c in self.channels:
            c.close()

    def _timestamp(self) -> int:
        # Wall-clock microseconds: strictly increasing per client, also across runs of short-lived processes.
        self.last_timestamp = max(time.time_ns() // 1000, self.last_timestamp + 1)
        return self.last_timestamp

    def _sign(self, operation: bytes):
        pb = self.pb
        request = pb.Request(client=self.net.id, timestamp=self._timestamp(), operation=operation)
        body = pb.SignedBody(request=request).SerializeToString()
        return request, pb.SignedEnvelope(body=body, signature=self.net.key.sign(body))

    def _check_reply(self, replica: int, request, envelope):
        """The reply's result if it is a REPLY to `request`, from `replica`, signed by `replica`; else None."""
        try:
            self.net.public_keys[replica].verify(envelope.signature, envelope.body)
        except InvalidSignature:
            return None
        body = self.pb.SignedBody()
        body.ParseFromString(envelope.body)
        if body.WhichOneof("kind") != "reply":
            return None
        reply = body.reply
        if (reply.replica, reply.client, reply.timestamp) != (replica, request.client, request.timestamp):
            return None
        return reply.result

    def submit(self, operation: bytes) -> bytes:
        """Sends the operation to every replica and waits for f+1 matching signed replies (retransmitting the
        same signed request to replicas whose call failed until the deadline)."""
        request, envelope = self._sign(operation)
        deadline = time.monotonic() + self.timeout
        answers = queue.Queue()
        votes = {}  # result -> set of replicas
        pending = {}

        def call(replica):
            remaining = max(deadline - time.monotonic(), 0.1)
            future = self.stubs[replica].Submit.future(envelope, timeout=remaining)
            pending[replica] = future
            future.add_done_callback(lambda fut, r=replica: answers.put((r, fut)))

        for replica in range(self.net.n):
            call(replica)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no f+1={self.net.f + 1} matching replies within {self.timeout} s; votes: "
                        + str({k.hex(): sorted(v) for k, v in votes.items()})
                    )
                try:
                    replica, future = answers.get(timeout=remaining)
                except queue.Empty:
                    continue
                del pending[replica]
                try:
                    reply = future.result()
                except grpc.RpcError as e:
                    # Down, refused, or not executed in time (e.g. during a view change): ask it again soon.
                    if deadline - time.monotonic() > 0.5:
                        time.sleep(0.2)
                        call(replica)
                    continue
                result = self._check_reply(replica, request, reply)
                if result is None:
                    print(f"warning: replica {replica} sent a reply that does not verify", file=sys.stderr)
                    continue
                voters = votes.setdefault(result, set())
                voters.add(replica)
                if len(voters) >= self.net.f + 1:
                    return result
        finally:
            for future in list(pending.values()):
                future.cancel()

    def put(self, key: bytes, value: bytes):
        op = self.pb.KvOperation(put=self.pb.KvPut(key=key, value=value))
        return self._result(self.submit(op.SerializeToString()))

    def get(self, key: bytes):
        op = self.pb.KvOperation(get=self.pb.KvGet(key=key))
        return self._result(self.submit(op.SerializeToString()))

    def _result(self, raw: bytes):
        result = self.pb.KvResult()
        result.ParseFromString(raw)
        return result.WhichOneof("outcome"), result

    def status(self, replica: int):
        return self.stubs[replica].GetStatus(self.pb.StatusQuery(), timeout=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testnet", required=True, type=pathlib.Path, help="directory made by `pbft testnet`")
    parser.add_argument("--client", type=int, default=0, help="client id (client-N.toml)")
    parser.add_argument("--key", default="python", help="key to put and read back")
    parser.add_argument("--value", default="hello from python", help="value to put")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for f+1 matching replies")
    parser.add_argument("--proto", type=pathlib.Path, default=DEFAULT_PROTO, help="path of pbft.proto")
    args = parser.parse_args()

    net = Testnet(args.testnet / f"client-{args.client}.toml")
    with tempfile.TemporaryDirectory(prefix="pbft-stubs-") as out:
        pb, pb_grpc = generate_stubs(args.proto, out)
        client = Client(pb, pb_grpc, net, args.timeout)
        try:
            outcome, _ = client.put(args.key.encode(), args.value.encode())
            if outcome != "done":
                print(f"error: put answered {outcome}", file=sys.stderr)
                return 1
            print(f"put {args.key} = {args.value}: done (f+1 = {net.f + 1} matching signed replies)")

            outcome, result = client.get(args.key.encode())
            if outcome != "value":
                print(f"error: get answered {outcome}", file=sys.stderr)
                return 1
            print(f"get {args.key}: {result.value.decode(errors='replace')}")

            print("replica  view  executed  checkpoint  peers")
            for replica in range(net.n):
                try:
                    s = client.status(replica)
                    print(
                        f"{s.replica:>7}  {s.view:>4}  {s.last_executed:>8}  {s.stable_checkpoint:>10}"
                        f"  {s.peers_connected:>5}"
                    )
                except grpc.RpcError as e:
                    print(f"{replica:>7}  unreachable: {e.code().name}")
        except TimeoutError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
