"""fedpress on Flower (flwr 1.41): every algorithm of the registry as a Flower app.

    from fedpress.flower import client_app, server_app, run_flower

Needs the `flower` extra (`pip install fedpress[flower]`). No algorithm module imports
flwr: the apps are built from the runtime core (see apps.py, client.py, asynchronous.py).
"""

import os

# before flwr is imported by any module of this package: no telemetry, Ray on CPUs only
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from fedpress.flower.apps import ConfigSource, FixedSource, GridClients, client_app, run_flower, server_app  # noqa: E402
from fedpress.flower.records import (  # noqa: E402
    STATE_STYPE,
    WIRE_STYPE,
    load_state,
    save_state,
    wire_bytes,
    wire_record,
)

__all__ = [
    "STATE_STYPE",
    "WIRE_STYPE",
    "ConfigSource",
    "FixedSource",
    "GridClients",
    "client_app",
    "load_state",
    "run_flower",
    "save_state",
    "server_app",
    "wire_bytes",
    "wire_record",
]
