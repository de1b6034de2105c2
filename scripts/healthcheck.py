#!/usr/bin/env python3
"""Container healthcheck for the web process: GET http://127.0.0.1:$PORT/healthz.

Sends a Host header Django accepts (the first DJANGO_ALLOWED_HOSTS entry, else
localhost) so that it works with any ALLOWED_HOSTS; /healthz is exempt from the HTTPS
redirect. Exit 0 when it answers 200, else 1 (Docker's HEALTHCHECK convention).
Standard library only.
"""

import http.client
import os
import sys


def host_header() -> str:
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(","):
        host = host.strip().lstrip(".")
        if host and "*" not in host:
            return host
    return "localhost"


def main() -> int:
    port = int(os.environ.get("HEALTHCHECK_PORT") or os.environ.get("PORT") or 8000)
    timeout = float(os.environ.get("HEALTHCHECK_TIMEOUT", "8"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"Host": host_header()})
        response = conn.getresponse()
        body = response.read(2000).decode("utf-8", "replace")
    except OSError as exc:
        print(f"healthz unreachable: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"{response.status} {body}")
    return 0 if response.status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
