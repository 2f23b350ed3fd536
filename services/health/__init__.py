"""The health service (probes, samples and the recovery ladder for the agents of one node).

- `service.py`: `HealthService` and `run`, what `fleet up` starts: follows the log, runs the
  probes and the sampling rounds, answers `fleet.ctl.health`.
- `model.py`: what it knows of each agent (`Watched`), its configuration, the health report.
- `agent_commands.py`: the commands it sends to agents, and health reports retried until
  acknowledged (`Reporter`).
- `ladder.py`: the recovery ladder a persisting failure climbs.
- `sampling.py`: psutil-like samples of an agent's process tree, one pass over /proc.
"""

from services.health.agent_commands import Reporter
from services.health.model import HealthConfig, Watched
from services.health.service import HealthService, run

__all__ = ["HealthConfig", "HealthService", "Reporter", "Watched", "run"]
