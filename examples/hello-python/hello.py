"""hello-python: a short-lived program built by examples/hello-python/Dockerfile.

It imports a few standard modules the way a small tool does (json, email, http.client,
urllib, argparse, ...), so that starting it reads a realistic share of the Python
standard library, then prints one line and exits.
"""

import argparse
import email.message
import http.client
import json
import platform
import urllib.parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="lazybuild")
    args = parser.parse_args()
    message = email.message.EmailMessage()
    message["Subject"] = urllib.parse.quote(f"hello from {args.name}")
    reply = json.dumps({"text": f"hello from a Python program built by {args.name}"})
    assert http.client.responses[200] == "OK"
    print(f"{json.loads(reply)['text']} ({platform.machine()})")


if __name__ == "__main__":
    main()
