"""Read one secret from rekeyd over mutual TLS with an identity file, with
stubs generated from proto/ by grpcio-tools (into a temporary directory, so
nothing generated is kept). Prints the CURRENT value, as `rekey get` does.

    pip install grpcio grpcio-tools
    python3 tests/python/read_secret.py https://127.0.0.1:8443 admin.pem demo/db/orders
"""

import importlib
import pathlib
import re
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"


def stubs(into):
    """Generates the rekey.v1 modules into `into` and imports them."""
    files = [str(path.relative_to(PROTO)) for path in (PROTO / "rekey" / "v1").glob("*.proto")]
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        ["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={into}", f"--grpc_python_out={into}"]
        + files
    )
    if status != 0:
        sys.exit(f"read_secret: protoc failed ({status})")
    sys.path.insert(0, str(into))
    return (
        importlib.import_module("rekey.v1.secrets_pb2"),
        importlib.import_module("rekey.v1.secrets_pb2_grpc"),
    )


def identity(path):
    """The private key, the certificate (chain) and the CA of an identity file."""
    text = pathlib.Path(path).read_text()
    blocks = [
        (match.group(1), match.group(0))
        for match in re.finditer(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", text, re.S)
    ]
    key = next(pem for label, pem in blocks if label.endswith("PRIVATE KEY"))
    certificates = [pem for label, pem in blocks if label == "CERTIFICATE"]
    return key.encode(), "".join(certificates[:-1]).encode(), certificates[-1].encode()


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: read_secret.py SERVER IDENTITY NAME")
    server, identity_file, name = sys.argv[1:]
    key, chain, ca = identity(identity_file)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
    with tempfile.TemporaryDirectory() as generated:
        secrets_pb2, secrets_grpc = stubs(generated)
        target = server.removeprefix("https://")
        with grpc.secure_channel(target, credentials) as channel:
            client = secrets_grpc.SecretsStub(channel)
            try:
                answer = client.GetSecretValue(secrets_pb2.GetSecretValueRequest(name=name), timeout=30)
            except grpc.RpcError as error:
                sys.exit(f"read_secret: {error.code().name}: {error.details()}")
    if answer.HasField("secret_string"):
        print(answer.secret_string)
    else:
        sys.stdout.buffer.write(answer.secret_binary)


if __name__ == "__main__":
    main()
