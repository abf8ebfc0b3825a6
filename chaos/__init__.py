"""`make chaos`: the proof that nothing acknowledged is lost or stored twice under faults.

    python -m chaos --duration 300 --agents 16 --seed 7 --faults-each 5

runs PostgreSQL, `td-backend serve`, `td-gateway run` (its backend URL pointing at a faulty
TCP proxy) and a `td-devsim hikvision` terminal; agents post logs while a seeded scheduler
kills and restarts the processes, restarts PostgreSQL, terminates its connections and cuts
or stalls the gateway→backend path; an operator opens doors through the admin API all along.
At the end the gateway drains and one JSON object says what was acknowledged, stored, lost
and duplicated, which faults ran, and how every door command ended. Exit status 1 when
anything was lost, doubled, stuck or run twice.

    proxy.py     the TCP proxy that cuts and stalls
    postgres.py  the PostgreSQL the run owns (pgserver's binaries, restarted with pg_ctl)
    stack.py     the processes, on fixed ports so restarts come back where expected
    agents.py    agents: register once, resend the same ids until 202
    commands.py  door commands and their executions on the terminal
    faults.py    the seeded schedule and the injectors
    run.py       one run and its report
"""
