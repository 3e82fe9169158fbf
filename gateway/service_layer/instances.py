"""Instance types, quotes, launches and instances.

A launch validates the request, reads the image (catalog), asks whether the caller may launch it
(sharing), then charges it once (billing) and creates its instances. Its client token is claimed
first, in a PENDING launch row; the charge is idempotent on the launch id, and the instances are
written in the same transaction that marks the launch DONE. So a launch ends with its instances and
exactly one charge, or with neither: a launch whose charge failed is forgotten, and one whose
outcome is unknown (billing unreachable) is finished later by a retry or the reconciler.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from chassis import context, ids, pagination
from chassis.context import Caller
from chassis.errors import Aborted, DomainError, NotFound, RemoteError
from chassis.logs import fields
from gateway.domain.model import (
    Image, Instance, InstanceType, Launch, LaunchRequest, LaunchState, Quote, Verdict, check_launchable,
    check_same_launch, offered_type,
)
from gateway.service_layer.dependencies import Dependencies

log = logging.getLogger("gateway.launch")

# A PENDING launch older than this is taken to have lost its caller; whoever finds it finishes it.
STALE_LAUNCH_AFTER = timedelta(seconds=10)
_WAIT_STEP_SECONDS = 0.02


async def list_instance_types(region: str, deps: Dependencies) -> list[InstanceType]:
    await deps.reference.region(region)
    types = await deps.reference.instance_types()
    return sorted((t for t in types.values() if region in t.regions), key=lambda t: t.instance_type)


async def _image_and_type(request: LaunchRequest, deps: Dependencies) -> tuple[Image, InstanceType]:
    request.validate()
    await deps.reference.region(request.region)
    instance_type = offered_type(await deps.reference.instance_types(), request.instance_type, request.region)
    return await deps.catalog.image(request.image_id), instance_type


def _checked(request: LaunchRequest, image: Image, verdict: Verdict, instance_type: InstanceType) -> Image:
    check_launchable(request, image, verdict, instance_type)
    return image.seen_with(verdict)


async def quote_run_instances(request: LaunchRequest, deps: Dependencies) -> Quote:
    """Validates and prices a launch exactly as RunInstances would; the verdict and the price are
    independent, so they are asked for at once."""
    image, instance_type = await _image_and_type(request, deps)
    verdict, quote = await asyncio.gather(deps.sharing.verdict(image), deps.billing.quote(request, image),
                                          return_exceptions=True)
    if isinstance(verdict, BaseException):
        raise verdict
    seen = _checked(request, image, verdict, instance_type)
    if isinstance(quote, BaseException):
        raise quote
    return replace(quote, image_allowed=seen.image_allowed)


async def run_instances(caller: Caller, request: LaunchRequest, dry_run: bool, deps: Dependencies
                        ) -> tuple[list[str], Quote]:
    if dry_run:
        return [], await quote_run_instances(request, deps)
    request.validate()
    if request.client_token:
        with deps.new_uow(read_only=True) as uow:
            earlier = uow.launches.by_token(caller.account_id, request.client_token)
        if earlier is not None:
            return await _result_of(earlier, request, deps)
    image, instance_type = await _image_and_type(request, deps)
    seen = _checked(request, image, await deps.sharing.verdict(image), instance_type)
    launch = Launch(
        launch_id=ids.new_id("lch"), account_id=caller.account_id, client_token=request.client_token or None,
        fingerprint=request.fingerprint(), state=LaunchState.PENDING, request=request,
        image_os_type=image.os_type, image_architecture=image.architecture,
        marketplace_product_id=image.marketplace_product_id, image_allowed=seen.image_allowed,
        instance_ids=[ids.new_id("ins") for _ in range(request.instance_count)], create_time=datetime.now(UTC),
    )
    with deps.new_uow() as uow:
        claimed = uow.launches.claim(launch)
        uow.commit()
    if not claimed:  # a concurrent call with the same client token got there first
        with deps.new_uow(read_only=True) as uow:
            earlier = uow.launches.by_token(caller.account_id, request.client_token)
        if earlier is None:
            raise _concurrent_launch_failed()
        return await _result_of(earlier, request, deps)
    return await finish_launch(launch, deps)


async def finish_launch(launch: Launch, deps: Dependencies) -> tuple[list[str], Quote]:
    """Charges a PENDING launch and creates its instances. Safe to run more than once, also at once:
    billing charges a launch id once, and only one caller turns the launch DONE."""
    try:
        charge_id, priced = await deps.billing.charge(launch)
    except RemoteError:
        # Billing refused the launch, and refuses before it writes: no charge exists, so the launch
        # is forgotten and its client token freed. Any other failure leaves the outcome unknown:
        # the launch stays PENDING for a retry or the reconciler to finish.
        with deps.new_uow() as uow:
            uow.launches.forget(launch.launch_id)
            uow.commit()
        raise
    quote = replace(priced, image_allowed=launch.image_allowed)
    with deps.new_uow() as uow:
        if uow.launches.complete(launch.launch_id, quote, charge_id):
            uow.instances.add(launch.instances(datetime.now(UTC)))
        uow.commit()
    return launch.instance_ids, quote


async def _result_of(launch: Launch, request: LaunchRequest, deps: Dependencies) -> tuple[list[str], Quote]:
    """The result of an earlier launch with the request's client token, once it is done."""
    check_same_launch(launch, request)
    while launch.state is LaunchState.PENDING:
        if datetime.now(UTC) - _aware(launch.create_time) > STALE_LAUNCH_AFTER:
            return await finish_launch(launch, deps)
        remaining = context.remaining_seconds()
        if remaining is not None and remaining < 2 * _WAIT_STEP_SECONDS:
            raise Aborted("LAUNCH_IN_PROGRESS", "a launch with this client_token is still in progress; retry")
        # Another call, maybe on another replica, is finishing it: look again shortly.
        await asyncio.sleep(_WAIT_STEP_SECONDS)
        with deps.new_uow(read_only=True) as uow:
            found = uow.launches.by_token(launch.account_id, request.client_token)
        if found is None:
            raise _concurrent_launch_failed()
        launch = found
    assert launch.quote is not None  # a DONE launch has its quote
    return launch.instance_ids, launch.quote


def _concurrent_launch_failed() -> Aborted:
    return Aborted("CONCURRENT_LAUNCH_FAILED", "a concurrent launch with this client_token failed; retry")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def reconcile_pending_launches(deps: Dependencies) -> int:
    """Finishes (or forgets) launches left PENDING by a gateway that died or lost billing mid-launch."""
    with deps.new_uow(read_only=True) as uow:
        stale = uow.launches.pending_before(datetime.now(UTC) - STALE_LAUNCH_AFTER)
    finished = 0
    for launch in stale:
        context.current_caller.set(Caller(launch.account_id))
        context.deadline.set(None)
        try:
            await finish_launch(launch, deps)
            finished += 1
        except DomainError as exc:
            log.warning("launch not finished", extra=fields(launch_id=launch.launch_id, reason=exc.reason))
    return finished


async def get_instance(caller: Caller, instance_id: str, deps: Dependencies) -> Instance:
    ids.require_id("ins", instance_id, "instance_id")
    with deps.new_uow(read_only=True) as uow:
        found = uow.instances.get(caller.account_id, instance_id)
    if found is None:
        raise NotFound("INSTANCE_NOT_FOUND", f"instance {instance_id} does not exist", resource_type="instance",
                       resource_name=instance_id)
    return found


async def list_instances(caller: Caller, region: str, page_size: int, page_token: str, deps: Dependencies
                         ) -> tuple[list[Instance], str]:
    if region:
        await deps.reference.region(region)
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.fingerprint("instances", caller.account_id, region)
    after = pagination.decode_page_token(page_token, fingerprint)
    with deps.new_uow(read_only=True) as uow:
        found = uow.instances.page(caller.account_id, region, after, size + 1)
    return pagination.page_of(found, size, fingerprint, lambda i: i.instance_id)
