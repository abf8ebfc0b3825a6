"""A Hikvision ISAPI access terminal (DS-K1T341 like), for development and tests.

    terminal.py  the terminal without I/O: request in, response out; its state and faults
    bodies.py    answers shaped like real firmware (namespaces differ per document)
    auth.py      Digest as the terminal enforces it: lock-out, worn-out nonces
    wire.py      the few wire details it parses (Digest params, POSIX zones, XML)
    stream.py    its alert stream (multipart/mixed) for followers
    server.py    the terminal on a socket (h11 on trio), reboots that really close it
    people.py    a demo crowd badging in and out over the day
    cli.py       `td-devsim hikvision ...`

Nothing here imports from `gateway/`: the adapter is tested against this, not against itself.
"""
