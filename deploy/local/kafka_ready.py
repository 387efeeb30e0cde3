"""Exit 0 once a Kafka broker returns at least one broker in response to a Metadata request.

Used by kafka.sh: an open port is not enough, because a KRaft broker accepts connections before
it has caught up with the metadata log. Standard library only, so it runs on a fresh machine.
"""

import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 4  # the oldest version Kafka 4.x still serves that is not a flexible version


def metadata_broker_count(host: str, port: int, timeout_s: float) -> int:
    client_id = b"herald-ready"
    header = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, 1, len(client_id)) + client_id
    body = struct.pack(">i?", 0, False)  # an empty topic list, no auto-creation
    request = header + body
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", read_exactly(connection, 4))[0]
        response = read_exactly(connection, size)
    # correlation id (4 bytes), throttle time (4 bytes), then the broker array length
    return struct.unpack(">i", response[8:12])[0]


def read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def main() -> int:
    host, port = sys.argv[1].rsplit(":", 1)
    try:
        return 0 if metadata_broker_count(host, int(port), 2.0) > 0 else 1
    except (OSError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main())
