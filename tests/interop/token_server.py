"""A small bearer-token server for docker-registry's `auth: token` (distribution 2.8).

Usage: token_server.py PORT KEY.pem CERT.pem ISSUER SERVICE USER PASSWORD

GET /token?service=...&scope=repository:NAME:ACTIONS with HTTP Basic USER:PASSWORD
answers {"token": JWT}: RS256, signed with KEY, the certificate in `x5c` (the registry
trusts it through its rootcertbundle), granting the scopes asked for. Wrong or missing
credentials get 401. Prints "listening" once it serves.
"""
import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

port, key_file, cert_file, issuer, service, user, password = sys.argv[1:8]
key = serialization.load_pem_private_key(open(key_file, "rb").read(), password=None)
cert = x509.load_pem_x509_certificate(open(cert_file, "rb").read())
cert_der = cert.public_bytes(serialization.Encoding.DER)
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(scopes):
    access = []
    for s in scopes:
        parts = s.split(":")
        if len(parts) >= 3 and parts[0] == "repository":
            access.append({"type": "repository", "name": ":".join(parts[1:-1]),
                           "actions": parts[-1].split(",")})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
    claims = {"iss": issuer, "sub": user, "aud": service, "exp": now + 600,
              "nbf": now - 60, "iat": now, "jti": b64url(os.urandom(12)), "access": access}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/token":
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="grove-test-token"')
            self.end_headers()
            return
        q = parse_qs(url.query)
        body = json.dumps({"token": token(q.get("scope", []))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", int(port)), Handler)
print("listening", flush=True)
server.serve_forever()
