"""Interop check with py-spiffe: fetch the X509-SVID, bundles and a JWT-SVID through Sigil's Workload API,
validate them with py-spiffe's own code, and (with --rotations N) wait for N rotations on the stream.

Prints one JSON object; exits non-zero with a message on any failure.
Usage: python3 workload_client.py unix:///path/api.sock [--audience A] [--rotations N] [--timeout S]
"""

import argparse
import json
import sys
import threading
import time

from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from spiffe import JwtSvid, WorkloadApiClient


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("--audience", default="sigil-interop")
    p.add_argument("--rotations", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()

    client = WorkloadApiClient(socket_path=args.socket)
    ctx = client.fetch_x509_context(timeout=30)
    svid = ctx.default_svid
    td = svid.spiffe_id.trust_domain
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
    if bundle is None or not bundle.x509_authorities:
        raise SystemExit(f"no X.509 bundle for {td}")
    # Verify the leaf's signature with an authority of the bundle (py-spiffe parsed and checked the SVID rules).
    leaf = svid.leaf
    issuer_ok = False
    for ca in bundle.x509_authorities:
        try:
            leaf.verify_directly_issued_by(ca)
            issuer_ok = True
        except Exception:  # noqa: BLE001 - try the next authority
            continue
    if not issuer_ok and len(svid.cert_chain) == 1:
        raise SystemExit("leaf is not signed by any authority in the bundle")
    uris = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )

    jwt = client.fetch_jwt_svid(audience={args.audience})
    jwt_bundles = client.fetch_jwt_bundles()
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
    if jwt_bundle is None:
        raise SystemExit(f"no JWT bundle for {td}")
    local = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {args.audience})
    remote = client.validate_jwt_svid(jwt.token, args.audience)

    result = {
        "client": "py-spiffe",
        "spiffe_id": str(svid.spiffe_id),
        "uri_sans": uris,
        "issuer_in_bundle": issuer_ok,
        "bundle_authorities": len(bundle.x509_authorities),
        "jwt_spiffe_id": str(local.spiffe_id),
        "jwt_validated_remotely": str(remote.spiffe_id),
        "rotations": [],
    }

    if args.rotations > 0:
        seen = []
        done = threading.Event()
        errors = []

        def on_success(c):
            s = c.default_svid
            seen.append((s.leaf.serial_number, s.leaf.not_valid_after_utc.timestamp(), time.time()))
            if len({x[0] for x in seen}) > args.rotations:
                done.set()

        def on_error(e):
            errors.append(str(e))
            done.set()

        handle = client.stream_x509_contexts(on_success, on_error, retry_connect=True)
        done.wait(args.timeout)
        handle.cancel()
        if errors:
            raise SystemExit(f"stream error: {errors[0]}")
        serials = []
        for serial, not_after, received in seen:
            if not serials or serials[-1]["serial"] != str(serial):
                serials.append({"serial": str(serial), "not_after": not_after, "received": received})
        if len(serials) <= args.rotations:
            raise SystemExit(f"saw {len(serials) - 1} rotations, wanted {args.rotations}")
        # Zero gaps: each new SVID arrived before the previous one expired.
        for prev, nxt in zip(serials, serials[1:]):
            if nxt["received"] >= prev["not_after"]:
                raise SystemExit(f"gap: new SVID arrived after the previous expired: {prev} -> {nxt}")
        result["rotations"] = serials

    client.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
