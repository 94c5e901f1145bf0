"""A plain TCP forwarder: `python -m sft_dev.forward LISTEN_HOST:PORT=TARGET_HOST:PORT ...`.

Pods on the real node cannot reach the host's 127.0.0.1, and the dev cluster's servers listen only
there. This makes one of them reachable on an address of the dev cluster's own bridge (the
apiserver on the `kubernetes` Service IP, SeaweedFS on the bridge's address), and nowhere else.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        conn, _ = listener.accept()
        try:
            upstream = socket.create_connection(target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def listen(listen_at: tuple[str, int]) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(listen_at)
    s.listen(128)
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any("=" not in a for a in argv):
        print("usage: python -m sft_dev.forward LISTEN_HOST:PORT=TARGET_HOST:PORT ...", file=sys.stderr)
        return 2
    for spec in argv:
        left, right = spec.split("=", 1)
        threading.Thread(target=_serve, args=(listen(_addr(left)), _addr(right)), daemon=True).start()
        print(f"forwarding {left} -> {right}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
