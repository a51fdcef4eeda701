"""The ceiling for the serving benchmark: a BentoML service that answers a constant list.

Same framework, same worker count and access-log setting as recforge's own
service (``service/service.py``), no model: what this machine can serve at
all. bench/serve.py and bench/gpu.py start it beside the real service:

    bentoml serve trivial_service:Trivial --working-dir bench --arg workers=1 --arg access_log=false
"""

from __future__ import annotations

import bentoml
from pydantic import BaseModel, Field

TRIVIAL = [{"item_id": i, "title": f"item {i}", "score": 1.0} for i in range(10)]


class TrivialArgs(BaseModel):
    workers: int = Field(1, ge=1)
    access_log: bool = False


ARGS = bentoml.use_arguments(TrivialArgs)


@bentoml.service(
    name="recforge-trivial",
    resources={"cpu": "1"},
    workers=ARGS.workers,
    traffic={"timeout": 30},
    http={"host": "127.0.0.1"},
    logging={"access": {"enabled": ARGS.access_log, "skip_paths": ["/livez", "/readyz", "/metrics"]}},
)
class Trivial:
    @bentoml.api(route="/trivial")
    async def trivial(self) -> list[dict]:
        """A constant answer."""
        return TRIVIAL
