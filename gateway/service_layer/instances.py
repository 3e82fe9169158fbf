"""Instance types, and the caller's instances: read, listed, terminated.

Terminating is one of the gateway's durable operations (see operations.py): the instances turn TERMINATED
in one transaction, with the request_id's answer and a job that ends their usage at billing. The call then
asks billing itself; if it cannot, the job does, on any replica, until billing has it. Ending usage is
idempotent at billing, so a retry never charges an hour twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime

from chassis import context, ids, jobs, pagination
from chassis.context import Caller
from chassis.errors import DomainError, NotFound
from chassis.jobs import Job, JobRun
from chassis.logs import fields
from gateway.adapters.repository import END_USAGE, EndUsage, end_usage_from_json, end_usage_to_json
from gateway.adapters.tables import JOBS
from gateway.domain.instances import (
    Instance,
    InstanceState,
    instance_ids_to_terminate,
    to_terminate,
)
from gateway.domain.model import ChargeType, InstanceType, Price
from gateway.service_layer.dependencies import Dependencies
from gateway.service_layer.operations import HOLD, REPLICA, give_up

log = logging.getLogger("gateway.instances")


async def list_instance_types(region: str, deps: Dependencies) -> list[InstanceType]:
    await deps.reference.region(region)
    types = await deps.reference.instance_types()
    return sorted((t for t in types.values() if region in t.regions), key=lambda t: t.instance_type)


async def list_prices(region: str, charge_type: ChargeType | None, instance_type: str, page_size: int,
                      page_token: str, deps: Dependencies) -> tuple[list[Price], str]:
    """The published price book, filtered and paged by billing."""
    if region:
        await deps.reference.region(region)
    return await deps.billing.prices(region, charge_type, instance_type, page_size, page_token)


def instance_not_found(instance_id: str) -> NotFound:
    """The one answer for an instance that does not exist and another account's."""
    return NotFound("INSTANCE_NOT_FOUND", f"instance {instance_id} does not exist", resource_type="instance",
                    resource_name=instance_id)


async def get_instance(caller: Caller, instance_id: str, deps: Dependencies) -> Instance:
    ids.require_id("ins", instance_id, "instance_id")
    with deps.new_uow(read_only=True) as uow:
        found = uow.instances.get(caller.account_id, instance_id)
    if found is None:
        raise instance_not_found(instance_id)
    return found


async def list_instances(caller: Caller, region: str, states: Collection[InstanceState], page_size: int,
                         page_token: str, deps: Dependencies) -> tuple[list[Instance], str]:
    if region:
        await deps.reference.region(region)
    size = pagination.clamp_page_size(page_size)
    wanted = sorted(set(states))
    fingerprint = pagination.fingerprint("instances", caller.account_id, region, [s.value for s in wanted])
    after = pagination.decode_page_token(page_token, fingerprint)
    with deps.new_uow(read_only=True) as uow:
        found = uow.instances.page(caller.account_id, region, wanted, after, size + 1)
    return pagination.page_of(found, size, fingerprint, lambda i: i.instance_id)


async def terminate_instances(caller: Caller, instance_ids: list[str], request_id: str, deps: Dependencies
                              ) -> list[Instance]:
    """Terminates the caller's instances, all or none; those terminated already stay as they are. Returns
    them in the order asked for."""
    ids.check_request_id(request_id)
    wanted = instance_ids_to_terminate(instance_ids)
    now = deps.clock.now()
    with deps.new_uow() as uow:
        claim = uow.terminations.claim(caller.account_id, request_id, "TerminateInstances",
                                       instance_ids=sorted(wanted))
        if claim.repeated:
            return claim.response
        found = uow.instances.lock_many(caller.account_id, wanted)
        for instance_id in wanted:
            if instance_id not in found:
                raise instance_not_found(instance_id)
        ending = [i.instance_id for i in to_terminate([found[i] for i in wanted])]
        uow.instances.terminate(ending, now)
        job_id = ""
        if ending:
            job_id = jobs.enqueue(uow.connection, JOBS, END_USAGE, caller.account_id,
                                  end_usage_to_json(EndUsage(caller.account_id, ending, now)), now,
                                  lease_owner=REPLICA, lease_until=now + HOLD)
        ended = set(ending)
        answer = [replace(found[i], state=InstanceState.TERMINATED, update_time=now, terminate_time=now)
                  if i in ended else found[i] for i in wanted]
        claim.answer(answer)
        uow.commit()
    if ending:
        await _end_usage(caller.account_id, ending, now, job_id, deps)
    return answer


async def _end_usage(account_id: str, instance_ids: list[str], end_time: datetime, job_id: str,
                     deps: Dependencies) -> None:
    """Tells billing that the instances' usage ended; the job that would have told it is done. If billing
    cannot be told now, the job is given up to the worker at once (the instances are terminated either
    way; only the settling of their usage waits)."""
    try:
        await deps.billing.end_usage(instance_ids, end_time)
    except DomainError as exc:
        log.warning("usage not ended yet; its job will", extra=fields(job_id=job_id, reason=exc.reason))
        give_up(job_id, deps)
        return
    except asyncio.CancelledError:  # the caller left: the job tells billing, starting now
        give_up(job_id, deps)
        raise
    with deps.new_uow() as uow:
        jobs.finish(uow.connection, JOBS, job_id, deps.clock.now())
        uow.commit()


async def end_usage_job(job: Job, run: JobRun, deps: Dependencies) -> None:
    """The job of a termination whose call could not tell billing: tells it (idempotent). Raises while
    billing cannot be reached; the worker tries again later. Data this release cannot read (a newer release's)
    raises chassis.stored.UnknownVersion before billing is told anything: the job waits for a replica that reads it."""
    end = end_usage_from_json(job.data)
    context.current_caller.set(Caller(end.account_id))
    context.deadline.set(None)
    await deps.billing.end_usage(end.instance_ids, end.end_time)
