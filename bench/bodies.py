"""Request bodies: how fast a large body reaches the handler, against a raw socket in the same run.

One client (a plain socket: `sendall` of a prebuilt request, then the answer read to its end, so the
client costs as little as it can) posts a 64 MiB octet-stream body, over a fresh connection each time, to:
- a raw socket server that `recv_into`s one preallocated buffer sized by Content-Length (the floor);
- a bare FastAPI route that awaits `request.body()` and answers its length, served by uvicorn with
  httptools and with h11 (its two HTTP parsers), by granian and by hypercorn: which ASGI server limits;
- Caliper's V2 infer route for an unknown pipeline: the whole receive path (every middleware, the body
  limit and read deadline, the route) and then a 404, so nothing is computed on the body.
Prints the median time and MB/s of each and its ratio to the raw socket.
Run: `.venv/bin/python -m bench.bodies` (part of `make bench`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from app.config import Settings
from app.storage.migrate import upgrade
from bench.http import free_port, start_caliper, wait_ready
from bench.timing import median_seconds, sized

BARE_APP = """
from fastapi import FastAPI, Request
app = FastAPI()
@app.get("/ready")
def ready() -> dict:
    return {}
@app.post("/v2/models/nope/infer")
async def receive(request: Request) -> dict:
    return {"bytes": len(await request.body())}
"""


def raw_server(port: int) -> None:
    """Serve forever: each connection's Content-Length bytes into one preallocated buffer, then 200."""
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                header, _, start = head.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in header.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = bytearray(length)
                view = memoryview(body)
                view[: len(start)] = start
                got = len(start)
                while got < length:
                    got += conn.recv_into(view[got:])
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


def post(port: int, request: bytes) -> Callable[[], None]:
    """One request over a fresh connection, its answer read to the end (the server closes or says
    `content-length`; every server here answers a small body)."""

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += conn.recv(65536)
            assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404")), answer[:200]

    return send


def request_of(size: int) -> bytes:
    header = (
        "POST /v2/models/nope/infer HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\n"
        f"inference-header-content-length: 2\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
    )
    return header.encode() + b"{}" + bytes(size - 2)


SERVERS = {  # the ASGI servers compared, each serving BARE_APP from module `bare_bodies`
    "uvicorn (httptools)": ["uvicorn", "bare_bodies:app", "--http", "httptools", "--no-access-log", "--port"],
    "uvicorn (h11)": ["uvicorn", "bare_bodies:app", "--http", "h11", "--no-access-log", "--port"],
    "granian": ["granian", "--interface", "asgi", "--no-ws", "bare_bodies:app", "--port"],
    "hypercorn": ["hypercorn", "bare_bodies:app", "--bind"],
}


def start_bare(server: str, folder: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    Path(folder, "bare_bodies.py").write_text(BARE_APP)
    command = SERVERS[server] + [f"127.0.0.1:{port}" if server == "hypercorn" else str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", *command], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_ready(f"http://127.0.0.1:{port}", "/ready")
    return process, port


def main() -> None:
    size, repeats = sized(64 << 20, 1 << 20), sized(7, 1)
    request = request_of(size)
    raw_port = free_port()
    threading.Thread(target=raw_server, args=(raw_port,), daemon=True).start()
    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db")
        upgrade(settings)
        caliper, url = start_caliper(settings.database_url, CALIPER_RATE_LIMIT="", CALIPER_ARTIFACT_DIR=f"{tmp}/a")
        servers.append(caliper)
        try:
            ports = {"raw socket, recv_into one buffer": raw_port}
            for name in SERVERS:
                server, port = start_bare(name, tmp)
                servers.append(server)
                ports[f"bare {name} request.body()"] = port
            ports["caliper /v2 infer (receive, 404)"] = int(url.rsplit(":", 1)[1])
            times = {name: median_seconds(post(port, request), repeats) for name, port in ports.items()}
        finally:
            for server in servers:
                server.terminate()
                server.wait()
    print(f"\nA {size / 2**20:.0f} MiB body, one client, a fresh connection each time (median of {repeats})")
    floor = times["raw socket, recv_into one buffer"]
    for name, seconds in times.items():
        print(f"  {name:<42} {seconds * 1e3:8.1f} ms  {size / seconds / 1e6:7.0f} MB/s  {seconds / floor:6.2f}x raw")


if __name__ == "__main__":
    main()
