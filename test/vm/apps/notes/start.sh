#!/bin/sh
# json-server, unchanged, with its database on the app's volume (/data).
[ -f /data/db.json ] || printf '{"notes":[]}\n' > /data/db.json
exec json-server --host 0.0.0.0 --port "$PORT" /data/db.json
