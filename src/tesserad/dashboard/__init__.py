"""The read-only web dashboard: pages and a versioned JSON API over HTTP (an api-layer adapter).

It calls the same domain services as the gRPC servicers; domain code never imports it.
"""

from tesserad.dashboard.api import Services
from tesserad.dashboard.server import DashboardServer

__all__ = ["DashboardServer", "Services"]
