#!/usr/bin/env python3
"""Bridges a Unix socket to a TCP port on 127.0.0.1, for peers that cannot
bind to 127.0.0.1 only (DCMTK storescp, Orthanc): they run in a private
network namespace together with this bridge, and the test reaches them
through the Unix socket, which lives on the shared filesystem.

usage: unix_bridge.py SOCKET_PATH PORT
Every connection to SOCKET_PATH is relayed to 127.0.0.1:PORT (in this
network namespace) until either side closes.
"""
import os
import socket
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(conn, port):
    try:
        up = socket.create_connection(("127.0.0.1", port))
    except OSError:
        conn.close()
        return
    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    a = threading.Thread(target=pipe, args=(conn, up), daemon=True)
    b = threading.Thread(target=pipe, args=(up, conn), daemon=True)
    a.start()
    b.start()
    a.join()
    b.join()
    conn.close()
    up.close()


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    # Appears only once it accepts: a test that sees the path can connect.
    os.rename(path + ".tmp", path)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, port), daemon=True).start()


if __name__ == "__main__":
    main()
