"""Access-control terminals: the adapter seam, Hikvision ISAPI, the gateway-side manager.

    base.py                 DeviceAdapter Protocol, DeviceError, vendor registry
    isapi.py, isapi_status  ISAPI bodies and answers without I/O (byte-fixture tested)
    digest.py               HTTP Digest for both ends, with the terminals' quirks
    hikvision.py            the adapter: httpx on trio, one client per terminal
    alert_stream.py         the ISAPI alert stream (multipart/mixed) without I/O, bounded
    streams.py              following a terminal's event stream: backoff, fallback to polling
    iclock.py               ZKTeco PUSH bodies and answers without I/O
    zkteco.py               ZkPushHub (terminals by serial, commands queued for their
                            poll) and the adapter; punches -> device_event logs
    zkteco_server.py        the /iclock/ endpoints on TD_ZK_LISTEN
    biostar_api.py          BioStar 2 REST bodies and answers without I/O
    biostar.py              the BioStar 2 adapter (one server, its doors)
    manager.py              DeviceManager: configs, commands, health polling, events -> logs

The simulators the adapters are tested against live in the top-level `devsim/` package.

Wiring in the gateway (one nursery):

    manager = DeviceManager(apsw.Connection(str(data_dir / "devices.db")),
                            poll_interval_s=config.device_poll_s)
    await nursery.start(partial(manager.run, append_logs=gateway.append,
                                report_state=control.send))
    # on DeviceConfig from the backend:  await manager.configure(cfg)
    # on Command(target="device"):       result = await manager.run_command(cmd)
"""
