"""The Flower App that `flwr run` deploys (see flower_app/pyproject.toml).

Its run config names a fedpress config: `config` (a TOML path readable by the SuperLink's
and the SuperNodes' machines), `overrides` (dotted.key=value pairs, space-separated, as
`fedpress run --set`) and `out` (the run directory, written on the ServerApp's machine).
Each SuperNode's `--node-config "partition-id=i num-partitions=N"` says which client it is.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpress.flower.apps import RunConfigSource, client_app, config_of, serve
from fedpress.runtime.experiment import setup

client = client_app(RunConfigSource())
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_of(context)
    serve(grid, setup(cfg), str(context.run_config.get("out", f"runs/{cfg.name}")))
