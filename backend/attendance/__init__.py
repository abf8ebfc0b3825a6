"""People and attendance (docs/attendance.md).

rules.py        pure: a shift's day frame in a zone, one employee-day's result
door_events.py  pure: Hikvision major/minor in words, which events are punches
capture.py      at ingest, in the same statement: punches, activity buckets, dirty marks
engine.py       the background task recomputing dirty employee-days
people.py       an employee as the engine and reports see them (zone, shift, cards, PCs)
directory.py    employees in the database: cards, workstations, names for door events
terminals.py    add_user / delete_user commands to the organisation's terminals
bodies.py       request bodies, checked at the edge
report.py       reading attendance and activity (never the raw logs)
"""
