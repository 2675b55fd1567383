#!/usr/bin/python3
"""A test Authority and a Scanner backend that checks what the Authority issued.

Three listeners on loopback:

- the Authority (HTTPS, client certificate required): OIDC discovery and a token endpoint
  for the client_credentials grant. It checks the DPoP proof of every token request by
  RFC 9449 section 4.3 itself (typ, alg, signature by the header's jwk, no private key,
  htm, htu, iat window, nonce, jti replay), binds the token to the proof's key with
  cnf.jkt (RFC 7638 thumbprint) and issues short-lived ES256 JWTs;
- the backend (HTTPS, client certificate required): /api/v1/runtime/events and
  /api/v1/policy/runtime. It verifies the token (signature, issuer, audience, expiry,
  scope) and, for a DPoP-bound token, the proof: the same checks plus ath and the key
  binding;
- an admin endpoint (plain HTTP) through which a test reads what happened (GET /state)
  and changes behaviour (POST /config, /down/<server>, /up/<server>, /revoke).

Signatures are checked with PyJWT and cryptography, never with the code under test.
Prints one JSON line with the three URLs, then serves until stdin closes or SIGTERM.
"""

import argparse
import base64
import gzip
import hashlib
import json
import secrets
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ALLOWED_SCOPES = {"aud:scanner", "api:scanner.runtime.write"}
CLIENT_ID = "zastava-runtime"
AUDIENCE = "scanner"

LOCK = threading.Lock()
CONFIG = {
    "token_type": "DPoP",  # what the token endpoint issues: DPoP (bound) or Bearer
    "lifetime": 60,  # seconds
    "authority_nonce": None,  # when set, token requests must carry it
    "backend_nonce": None,  # when set, backend requests must carry it
    "client_cn": "zastava-observer",  # the registered client certificate's subject CN
    "client_secret": None,  # when set, client_secret_basic is required too
    "static_tokens": [],  # Bearer tokens the backend takes besides the Authority's
    "iat_window": 60,
}
STATE = {
    "issued": [],
    "proofs": [],
    "refused": [],
    "backend": [],
    "handshake_failures": {"authority": 0, "backend": 0},
}
SEEN_JTI = {"authority": set(), "backend": set()}
REVOKED = set()
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER = None


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk):
    """RFC 7638: the required members of an EC key, sorted, no whitespace."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


class ProofError(Exception):
    def __init__(self, reason, nonce_wanted=False):
        super().__init__(reason)
        self.reason = reason
        self.nonce_wanted = nonce_wanted


def check_proof(server, proofs, method, url, nonce, access_token=None):
    """RFC 9449 section 4.3; returns (claims, jwk)."""
    if len(proofs) != 1:
        raise ProofError(f"{len(proofs)} DPoP headers, not exactly one")
    proof = proofs[0]
    if proof.count(".") != 2:
        raise ProofError("the proof is not a JWS")
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError as e:
        raise ProofError(f"unreadable header: {e}")
    if header.get("typ") != "dpop+jwt":
        raise ProofError(f"typ is {header.get('typ')!r}, not dpop+jwt")
    if header.get("alg") != "ES256":
        raise ProofError(f"alg {header.get('alg')!r} is not supported")
    key = header.get("jwk")
    if not isinstance(key, dict) or key.get("kty") != "EC" or key.get("crv") != "P-256":
        raise ProofError("the header has no P-256 jwk")
    if "d" in key:
        raise ProofError("the jwk holds a private key")
    try:
        public = jwt.PyJWK(key, algorithm="ES256").key
        claims = jwt.decode(
            proof,
            key=public,
            algorithms=["ES256"],
            options={"verify_aud": False, "verify_iat": False, "require": ["jti", "htm", "htu", "iat"]},
        )
    except jwt.PyJWTError as e:
        raise ProofError(f"signature or claims: {e}")
    if claims["htm"] != method:
        raise ProofError(f"htm {claims['htm']!r} is not {method}")
    if claims["htu"] != url:
        raise ProofError(f"htu {claims['htu']!r} is not {url}")
    if abs(time.time() - claims["iat"]) > CONFIG["iat_window"]:
        raise ProofError(f"iat {claims['iat']} is outside the {CONFIG['iat_window']} s window")
    if nonce is not None and claims.get("nonce") != nonce:
        raise ProofError(f"nonce {claims.get('nonce')!r} is not the current one", nonce_wanted=True)
    if access_token is not None:
        expected = b64url(hashlib.sha256(access_token.encode()).digest())
        if claims.get("ath") != expected:
            raise ProofError("ath is not the hash of the access token")
    with LOCK:
        if claims["jti"] in SEEN_JTI[server]:
            raise ProofError("jti replayed")
        SEEN_JTI[server].add(claims["jti"])
    return claims, key


def client_cn(handler):
    cert = handler.connection.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: every connection closes after its reply, so taking a server down leaves no
    # pooled connection talking to it.
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def url(self):
        port = self.server.server_address[1]
        return f"https://127.0.0.1:{port}{urlsplit(self.path).path}"


class AuthorityHandler(Handler):
    def do_GET(self):
        if self.path == "/.well-known/openid-configuration":
            self.reply(200, {
                "issuer": ISSUER,
                "token_endpoint": f"{ISSUER}/token",
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["tls_client_auth", "client_secret_basic"],
                "dpop_signing_alg_values_supported": ["ES256"],
            })
        else:
            self.reply(404, {"error": "not_found"})

    def refuse(self, status, error, description, headers=()):
        with LOCK:
            STATE["refused"].append({"server": "authority", "error": error, "description": description})
        self.reply(status, {"error": error, "error_description": description}, headers)

    def do_POST(self):
        if self.path != "/token":
            return self.reply(404, {"error": "not_found"})
        form = {k: v[0] for k, v in parse_qs(self.body().decode()).items()}
        with LOCK:
            config = dict(CONFIG)
        cn = client_cn(self)
        if cn != config["client_cn"]:
            return self.refuse(401, "invalid_client", f"client certificate CN {cn!r} is not registered")
        if config["client_secret"] is not None:
            auth = self.headers.get("Authorization", "")
            wanted = "Basic " + base64.b64encode(f"{CLIENT_ID}:{config['client_secret']}".encode()).decode()
            if auth != wanted:
                return self.refuse(401, "invalid_client", "wrong or missing client secret")
        if form.get("grant_type") != "client_credentials":
            return self.refuse(400, "unsupported_grant_type", f"{form.get('grant_type')!r}")
        if form.get("client_id") != CLIENT_ID:
            return self.refuse(401, "invalid_client", f"unknown client {form.get('client_id')!r}")
        scopes = form.get("scope", "").split()
        if not scopes or not set(scopes) <= ALLOWED_SCOPES:
            return self.refuse(400, "invalid_scope", f"{scopes}")
        if form.get("audience") != AUDIENCE:
            return self.refuse(400, "invalid_target", f"audience {form.get('audience')!r}")
        proofs = self.headers.get_all("DPoP") or []
        jkt = None
        nonce_used = None
        if proofs:
            try:
                claims, key = check_proof("authority", proofs, "POST", self.url(), config["authority_nonce"])
            except ProofError as e:
                if e.nonce_wanted:
                    return self.refuse(400, "use_dpop_nonce", e.reason,
                                       [("DPoP-Nonce", config["authority_nonce"])])
                return self.refuse(400, "invalid_dpop_proof", e.reason)
            jkt = thumbprint(key)
            nonce_used = claims.get("nonce")
            with LOCK:
                STATE["proofs"].append(proofs[0])
        token_type = config["token_type"]
        if token_type == "DPoP" and jkt is None:
            return self.refuse(400, "invalid_dpop_proof", "a DPoP proof is required")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": CLIENT_ID,
            "aud": AUDIENCE,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + config["lifetime"],
            "jti": secrets.token_urlsafe(12),
        }
        if token_type == "DPoP":
            claims["cnf"] = {"jkt": jkt}
        token = jwt.encode(claims, SIGNING_KEY, algorithm="ES256", headers={"typ": "at+jwt"})
        with LOCK:
            STATE["issued"].append({
                "jti": claims["jti"], "jkt": jkt if token_type == "DPoP" else None,
                "proof_jkt": jkt, "token_type": token_type, "iat": now, "exp": claims["exp"],
                "nonce": nonce_used, "client_cn": cn, "scope": claims["scope"],
            })
        self.reply(200, {
            "access_token": token, "token_type": token_type,
            "expires_in": config["lifetime"], "scope": claims["scope"],
        }, [("Cache-Control", "no-store")])


class BackendHandler(Handler):
    def do_POST(self):
        raw = self.body()
        record = {"path": urlsplit(self.path).path, "time": time.time()}
        status, body, headers = self.check(record)
        if status == 200:
            text = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            try:
                payload = json.loads(text or b"null")
            except ValueError:
                payload = None
            if record["path"] == "/api/v1/runtime/events" and isinstance(payload, dict):
                record["batchId"] = payload.get("batchId")
                record["events"] = payload.get("events", [])
            elif record["path"] == "/api/v1/policy/runtime" and isinstance(payload, dict):
                body = {"results": [
                    {"digest": i["digest"], "verdict": "allow", "ttlSeconds": 300}
                    for i in payload.get("images", [])
                ]}
            else:
                status, body = 404, {"error": "not_found"}
        record["status"] = status
        with LOCK:
            STATE["backend"].append(record)
        self.reply(status, body, headers)

    def check(self, record):
        """(status, body, headers) of the authorization check; 200 when it passes."""
        with LOCK:
            config = dict(CONFIG)
            revoked = set(REVOKED)
        def deny(error, description, extra=()):
            record["error"] = error
            record["description"] = description
            challenge = f'DPoP error="{error}", error_description="{description}"'
            return 401, None, [("WWW-Authenticate", challenge), *extra]
        record["client_cn"] = client_cn(self)
        if record["client_cn"] != config["client_cn"]:
            return 403, None, []
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        record["scheme"] = scheme
        if scheme == "Bearer" and token in config["static_tokens"]:
            record["static"] = True
            return 200, None, []
        try:
            claims = jwt.decode(token, key=SIGNING_KEY.public_key(), algorithms=["ES256"],
                                audience=AUDIENCE, issuer=ISSUER,
                                options={"require": ["exp", "iat", "jti", "scope"]})
        except jwt.PyJWTError as e:
            return deny("invalid_token", f"{type(e).__name__}: {e}")
        record["token_jti"] = claims["jti"]
        if claims["jti"] in revoked:
            return deny("invalid_token", "revoked")
        if "api:scanner.runtime.write" not in claims["scope"].split():
            return 403, None, []
        jkt = (claims.get("cnf") or {}).get("jkt")
        if jkt is None:
            return (200, None, []) if scheme == "Bearer" else deny("invalid_token", "a Bearer token sent as DPoP")
        if scheme != "DPoP":
            return deny("invalid_token", "a DPoP-bound token sent without DPoP")
        try:
            proof, key = check_proof("backend", self.headers.get_all("DPoP") or [], "POST",
                                     self.url(), config["backend_nonce"], access_token=token)
        except ProofError as e:
            if e.nonce_wanted:
                return deny("use_dpop_nonce", e.reason, [("DPoP-Nonce", config["backend_nonce"])])
            return deny("invalid_dpop_proof", e.reason)
        if thumbprint(key) != jkt:
            return deny("invalid_dpop_proof", "the proof's key is not the one the token is bound to")
        record.update({"jkt": jkt, "proof_jti": proof["jti"], "nonce": proof.get("nonce"),
                       "ath": proof["ath"], "proof": self.headers.get("DPoP"),
                       "authorization": self.headers.get("Authorization")})
        return 200, None, []


class TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, context, name):
        self.context = context
        self.name = name
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        # The handshake in the connection's own thread: a failing client does not stall
        # the others.
        try:
            request.settimeout(10)
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            with LOCK:
                STATE["handshake_failures"][self.name] += 1
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class Listener:
    """A server that can be taken down (its port refuses connections) and brought back."""

    def __init__(self, name, handler, context, port=0):
        self.name, self.handler, self.context = name, handler, context
        self.port = port
        self.server = None
        self.up()

    def up(self):
        if self.server is None:
            self.server = TlsServer(("127.0.0.1", self.port), self.handler, self.context, self.name)
            self.port = self.server.server_address[1]
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


LISTENERS = {}


class AdminHandler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        # Read what was sent, or closing the connection would reset it.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/state":
            with LOCK:
                self.reply(200, {**STATE, "config": CONFIG})
        else:
            self.reply(404, {})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/config":
            with LOCK:
                unknown = set(data) - set(CONFIG)
                if unknown:
                    return self.reply(400, {"error": f"unknown settings {sorted(unknown)}"})
                CONFIG.update(data)
                return self.reply(200, CONFIG)
        if self.path == "/revoke":
            with LOCK:
                REVOKED.update(t["jti"] for t in STATE["issued"])
            return self.reply(200, {"revoked": len(REVOKED)})
        for action in ("down", "up"):
            prefix = f"/{action}/"
            if self.path.startswith(prefix) and self.path[len(prefix):] in LISTENERS:
                getattr(LISTENERS[self.path[len(prefix):]], action)()
                return self.reply(200, {action: self.path[len(prefix):]})
        self.reply(404, {})


def main():
    global ISSUER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", help="server certificate (PEM)")
    parser.add_argument("--key", help="server key (PEM)")
    parser.add_argument("--client-ca", help="CA of accepted client certificates")
    parser.add_argument("--thumbprint", metavar="KEY", help="print the RFC 7638 thumbprint of a PEM P-256 private key and exit")
    args = parser.parse_args()
    if args.thumbprint:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        with open(args.thumbprint, "rb") as f:
            numbers = load_pem_private_key(f.read(), password=None).public_key().public_numbers()
        print(thumbprint({"crv": "P-256", "kty": "EC",
                          "x": b64url(numbers.x.to_bytes(32, "big")),
                          "y": b64url(numbers.y.to_bytes(32, "big"))}))
        return
    if not (args.cert and args.key and args.client_ca):
        parser.error("--cert, --key and --client-ca are required to serve")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(args.client_ca)

    LISTENERS["authority"] = Listener("authority", AuthorityHandler, context)
    LISTENERS["backend"] = Listener("backend", BackendHandler, context)
    ISSUER = f"https://127.0.0.1:{LISTENERS['authority'].port}"
    admin = ThreadingHTTPServer(("127.0.0.1", 0), AdminHandler)
    admin.daemon_threads = True
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    print(json.dumps({
        "issuer": ISSUER,
        "backend": f"https://127.0.0.1:{LISTENERS['backend'].port}/",
        "admin": f"http://127.0.0.1:{admin.server_address[1]}",
    }), flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # The test holds stdin open; when it goes away (even by a crash), so does this server.
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()


if __name__ == "__main__":
    main()
