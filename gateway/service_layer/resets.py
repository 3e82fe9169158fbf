"""Resets: reinstalling an instance from an image (backup and recovery), checked and priced as a launch.

A reset runs the launch's checks (the image's region, architecture and size, permission, share state, trust
policy) and is priced by billing (hourly instances: the new image's hourly price; PREPAID ones: the new
image's license and marketplace lines for the months left). Then it is one of the gateway's durable
operations (see operations.py):

1. one transaction turns the instance RESETTING, records the request_id's answer (the reset and its quote)
   and writes the reset's job, held by this call;
2. billing records the reset (ChargeReset, idempotent on the reset id): the old price ends, the new one
   starts;
3. one transaction makes the instance RUNNING the new image and finishes the job.

If billing cannot be reached in step 2 the call answers with the instance RESETTING and gives the job up at
once; a worker finishes it on any replica. A call that dies leaves the job due when its hold ends. Billing
refusing the reset outright (it never should: the price was quoted a moment before) undoes it: the instance
runs its old image again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from chassis import context, ids, jobs
from chassis.context import Caller
from chassis.errors import DomainError, RemoteError
from chassis.jobs import Job, JobRun
from chassis.logs import fields
from gateway.adapters.repository import RESET_INSTANCE, ResetAnswer, reset_from_json, reset_job_id, reset_to_json
from gateway.adapters.tables import JOBS
from gateway.domain.instances import (
    Instance,
    Reset,
    check_launchable,
    check_resettable,
    new_reset,
    offered_type,
    reset_request,
)
from gateway.domain.model import Quote, Verdict
from gateway.service_layer.dependencies import Dependencies
from gateway.service_layer.instances import get_instance
from gateway.service_layer.launches import checked_and_priced
from gateway.service_layer.operations import HOLD, REPLICA, give_up

log = logging.getLogger("gateway.resets")


async def quote_reset_instance(caller: Caller, instance_id: str, image_id: str, deps: Dependencies) -> Quote:
    """Validates and prices a reset exactly as ResetInstance would; changes nothing."""
    _, _, quote = await _checked_and_priced(caller, instance_id, image_id, "", deps)
    return quote


async def reset_instance(caller: Caller, instance_id: str, image_id: str, request_id: str, dry_run: bool,
                         deps: Dependencies) -> tuple[Instance, Quote]:
    """Resets the caller's instance to an image; returns the instance (RUNNING the new image once the reset is
    done, RESETTING while billing cannot be reached) and its price from then on."""
    ids.check_request_id(request_id)
    if dry_run:
        instance, _, quote = await _checked_and_priced(caller, instance_id, image_id, "", deps)
        return instance, quote
    with deps.new_uow(read_only=True) as uow:  # a repeat is answered, not checked again (the instance changed)
        earlier = uow.resets.answered(caller.account_id, request_id, "ResetInstance", instance_id=instance_id,
                                      image_id=image_id)
    if earlier is not None:
        return await _answer_again(caller, earlier.response, deps)
    instance, reset, quote = await _checked_and_priced(caller, instance_id, image_id, ids.new_id("rst"), deps)
    with deps.new_uow() as uow:
        claim = uow.resets.claim(caller.account_id, request_id, "ResetInstance", instance_id=instance_id,
                                 image_id=image_id)
        if claim.repeated:  # the same request_id raced this call, and won
            uow.commit()
            return await _answer_again(caller, claim.response, deps)
        if not uow.instances.start_reset(instance_id, reset.effective_time):
            current = uow.instances.get(caller.account_id, instance_id)
            assert current is not None  # instances are never deleted
            check_resettable(current)  # it changed since it was checked: the reason it cannot be reset now
            raise AssertionError(f"instance {instance_id} could not be reset from {current.state}")
        jobs.enqueue(uow.connection, JOBS, RESET_INSTANCE, instance_id, reset_to_json(reset), reset.effective_time,
                     job_id=reset_job_id(reset.reset_id), lease_owner=REPLICA,
                     lease_until=reset.effective_time + HOLD)
        claim.answer(ResetAnswer(reset.reset_id, instance_id, quote))
        uow.commit()
    return await _finish_or_leave(caller, reset, quote, deps)


async def _checked_and_priced(caller: Caller, instance_id: str, image_id: str, reset_id: str,
                              deps: Dependencies) -> tuple[Instance, Reset, Quote]:
    ids.require_id("img", image_id, "image_id")
    instance = await get_instance(caller, instance_id, deps)  # another account's is NOT_FOUND, like a missing one
    check_resettable(instance)
    with deps.new_uow(read_only=True) as uow:
        launch = uow.launches.get(instance.launch_id)
    request = reset_request(instance, image_id, launch.request.period_months if launch else 0)
    instance_type = offered_type(await deps.reference.instance_types(), instance.instance_type, instance.region)
    image = await deps.catalog.image(image_id, instance.region)
    reset = new_reset(reset_id, instance, request.period_months, image, deps.clock.now())

    def check(verdict: Verdict) -> Verdict:
        check_launchable(request, image, verdict, instance_type)
        return verdict

    verdict, quote = await checked_and_priced(deps.sharing.verdict(image), deps.billing.quote_reset(reset), check)
    return instance, reset, replace(quote, image_allowed=verdict.image_allowed)


async def _finish_or_leave(caller: Caller, reset: Reset, quote: Quote, deps: Dependencies) -> tuple[Instance, Quote]:
    """Finishes a started reset now if billing can be reached; else leaves it to its job."""
    try:
        await finish_reset(reset, deps)
    except RemoteError:  # refused, and undone: the caller hears why
        raise
    except DomainError as exc:
        log.warning("reset not finished yet; its job will", extra=fields(reset_id=reset.reset_id, reason=exc.reason))
        give_up(reset_job_id(reset.reset_id), deps)
    except asyncio.CancelledError:  # the caller left (deadline, cancel): the job finishes it, starting now
        give_up(reset_job_id(reset.reset_id), deps)
        raise
    return await get_instance(caller, reset.instance_id, deps), quote


async def finish_reset(reset: Reset, deps: Dependencies) -> None:
    """Records the reset at billing (idempotent on its id), then the instance runs the new image and the reset's
    job is done. A reset that billing refuses outright is undone: the instance runs its old image again."""
    try:
        await deps.billing.charge_reset(reset)
    except RemoteError as exc:  # a refusal, not an outage: it will never be charged
        log.error("reset refused by billing; undone", extra=fields(reset_id=reset.reset_id, reason=exc.reason))
        _end(reset, deps, undone=True)
        raise
    _end(reset, deps, undone=False)


def _end(reset: Reset, deps: Dependencies, undone: bool) -> None:
    now = deps.clock.now()
    with deps.new_uow() as uow:
        uow.instances.end_reset(reset.instance_id, None if undone else reset.image_id, now)
        jobs.finish(uow.connection, JOBS, reset_job_id(reset.reset_id), now)
        uow.commit()


async def _answer_again(caller: Caller, answer: ResetAnswer, deps: Dependencies) -> tuple[Instance, Quote]:
    """The answer to a repeated request_id: its reset, finished now if its job is still open."""
    with deps.new_uow(read_only=True) as uow:
        record = jobs.read(uow.connection, JOBS, reset_job_id(answer.reset_id))
    if record is not None and record.state == jobs.PENDING:
        reset = reset_from_json(record.data)
        try:
            await finish_reset(reset, deps)
        except DomainError as exc:
            log.warning("reset not finished yet", extra=fields(reset_id=answer.reset_id, reason=exc.reason))
    return await get_instance(caller, answer.instance_id, deps), answer.quote


async def reset_job(job: Job, run: JobRun, deps: Dependencies) -> None:
    """The job of a reset whose call did not finish it: finishes it. Raises while billing cannot be reached;
    the worker tries again later. A refused reset is undone and its job ends."""
    reset = reset_from_json(job.data)
    context.current_caller.set(Caller(reset.account_id))
    context.deadline.set(None)
    try:
        await finish_reset(reset, deps)
    except RemoteError:
        return
