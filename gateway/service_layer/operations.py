"""What the gateway's durable operations share: who holds their jobs, and for how long a call holds one.

A launch, a termination and a reset each write a job (chassis.jobs) in the transaction that starts them,
held by the call that does the work, for HOLD. The call that finishes its work finishes the job in the same
transaction; a call that cannot (a dependency is down) gives the job up at once; a call that dies leaves it
due when the hold ends. Then a worker on any replica finishes it (gateway.service_layer.background).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from chassis import jobs
from chassis.logs import fields
from gateway.adapters.tables import JOBS
from gateway.service_layer.dependencies import Dependencies

log = logging.getLogger("gateway.operations")

# How long the call that starts an operation holds its job: longer than any call's deadline.
HOLD = timedelta(seconds=10)
# Who holds this process's jobs: those of the operations its calls run, and those its worker finishes.
REPLICA = jobs.new_owner("gateway")


def give_up(job_id: str, deps: Dependencies) -> None:
    """Makes a job this call holds due at once (the call could not finish its operation, or its caller left):
    a worker on any replica finishes it. If even that fails, the job is due when the hold ends."""
    try:
        with deps.new_uow() as uow:
            jobs.release_hold(uow.connection, JOBS, job_id, REPLICA, deps.clock.now())
            uow.commit()
    except Exception:
        log.exception("could not give a job up", extra=fields(job_id=job_id))
