"""The gateway: REST, live events, terminals and the dashboard over the bus (aiohttp).

Its modules form a DAG (keys.py lists the layers): `app` on top builds the application from
the route groups, which build on the keys and helpers at the bottom. `fleet up` uses what is
re-exported here.
"""

from services.gateway.app import init, start, url_of
from services.gateway.keys import METRICS

__all__ = ["METRICS", "init", "start", "url_of"]
