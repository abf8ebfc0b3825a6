"""The gateways' WebSocket control channel (`GET /v2/gateways/control`), backend side.

hub.py       which gateway is connected here; LISTEN/NOTIFY between instances
session.py   one connected gateway: handshake, messages in, messages out
state.py     the database side of every control message
sweeper.py   command expiry and ONLINE -> OFFLINE when reports stop
"""
