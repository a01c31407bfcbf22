"""An embedded Kubernetes cluster emulator for tests, the demo and local trials.

It serves the real Kubernetes API over HTTP and websockets on 127.0.0.1 and runs
containers for real in bubblewrap sandboxes laid out like the real images, so the
driver is tested against the wire contract instead of mocks. It is a development
tool: the driver never imports this package, and a production install does not need
its dependency (aiohttp, the `emulator` extra).
"""

from .cluster import EmulatedCluster, serve_forever
from .images import MissingToolError
from .kubelet import NodeSettings

__all__ = ["EmulatedCluster", "MissingToolError", "NodeSettings", "serve_forever"]
