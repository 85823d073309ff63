"""The runtime core: what every runtime (the synchronous simulator, the virtual clock,
Flower rounds, Flower's asynchronous loop) does the same way, written once.

    experiment.py   a config built once: data, partition, model on its device, algorithm
    turn.py         the client's turn: begin -> executor -> end -> encode (`client_turns`)
    accept.py       the server's acceptance of an upload: count, checks, version, decode (`accept`)
    transport.py    the only place bytes are counted: encode, record, decode (`Transport`)
    rejections.py   why an update was left out: `Rejection`, beside the wire's `Reason`
    executor.py     how a batch of local trainings runs (`Sequential`)
    outputs.py      the run directory: resume check, checkpoints, metrics rows, summary, progress

The drivers differ only in how clients are reached and how time passes: `sim.rounds`
(rounds in process), `sim.asynchronous` (a virtual clock), `flower.apps` (rounds on
Flower's Grid) and `flower.asynchronous` (Flower, real time).
"""
