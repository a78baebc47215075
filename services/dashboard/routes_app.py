"""The installable app: the web app manifest, ``/favicon.ico`` and the
service worker that shows notifications.

Both are public (a browser fetches them without the session cookie, and they
hold nothing secret), like ``/static/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from litestar import Response, get

STATIC = Path(__file__).parent / "static"
MANIFEST_PATH: Final = "/manifest.webmanifest"
FAVICON_PATH: Final = "/favicon.ico"
WORKER_PATH: Final = "/sw.js"  # at the root: its scope is the whole dashboard
PUBLIC_PATHS: Final = (MANIFEST_PATH, FAVICON_PATH, WORKER_PATH)
CACHE = {"Cache-Control": "public, max-age=86400"}

MANIFEST: Final = {
    "name": "hyperhive operator dashboard",
    "short_name": "hyperhive",
    "description": "Approve changes, answer questions and watch the agents of a hive.",
    "id": "/",
    "start_url": "/",
    "scope": "/",
    "display": "standalone",
    "orientation": "any",
    "background_color": "#07070c",
    "theme_color": "#07070c",
    "icons": [
        {"src": "/static/icon-192.png", "sizes": "192x192", "type": "image/png"},
        {"src": "/static/icon-512.png", "sizes": "512x512", "type": "image/png"},
        {
            "src": "/static/icon-maskable-512.png",
            "sizes": "512x512",
            "type": "image/png",
            "purpose": "maskable",
        },
    ],
}
_MANIFEST_BYTES: Final = json.dumps(MANIFEST, indent=1).encode()


@get(MANIFEST_PATH)
async def manifest() -> Response[bytes]:
    return Response(_MANIFEST_BYTES, media_type="application/manifest+json", headers=CACHE)


@get(FAVICON_PATH)
async def favicon() -> Response[bytes]:
    return Response((STATIC / "favicon.ico").read_bytes(), media_type="image/x-icon", headers=CACHE)


@get(WORKER_PATH)
async def service_worker() -> Response[bytes]:
    return Response(
        (STATIC / "sw.js").read_bytes(),
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache"},
    )


HANDLERS = [manifest, favicon, service_worker]
