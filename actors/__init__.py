"""fleetd's Ray actors: one agent actor per agent (agent/) and the supervisor (supervisor/).

Every actor's worker process imports this package first, so nats-py is imported here without
the aiohttp it would pull in for WebSocket URLs alone (infra/natsimport.py): about 5.5 MB less
in each agent actor.
"""

from infra import natsimport

natsimport.import_nats()
