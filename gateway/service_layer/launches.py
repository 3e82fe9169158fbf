"""Launches: quotes, and the saga that runs instances and charges them once.

A launch validates the request, reads the image (catalog), asks whether the caller may launch it
(sharing), then charges it once (billing) and runs its instances. Its client token is claimed first,
in a PENDING launch row written with its PENDING instances; the charge is idempotent on the launch
id; finishing flips the launch to DONE and its instances to RUNNING. So a launch ends with its
instances and exactly one charge, or with neither:
- billing refuses, or could not be reached at all → nothing was charged: the launch is forgotten and
  the refusal is the answer;
- billing's answer is lost → the outcome is decided, not guessed: billing resolves the launch id
  (its charge if one exists, else the id is voided so that no late charge can land). Charged → the
  launch is finished; void → it is forgotten. When billing cannot even be asked, the launch is
  IN_DOUBT and the caller is told so (LAUNCH_OUTCOME_UNKNOWN): a retry with the same client token,
  or the launch's job, resolves it.

Each launch has a durable job (chassis.jobs) that settles it if its call does not. The claim writes
it, held by the call (this replica) for STALE_LAUNCH_AFTER; settling the launch finishes it in the
same transaction. A launch marked IN_DOUBT makes its job due at once; a call that dies leaves it due
when the hold ends. Then a worker on any replica settles the launch, and retries, backing off, while
billing cannot be asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

from prometheus_client import Counter

from chassis import context, ids
from chassis.context import Caller
from chassis.errors import Aborted, DomainError, RemoteError, Unreached
from chassis.jobs import Job, JobRun
from chassis.logs import fields
from gateway.domain.instances import (
    Launch,
    LaunchRequest,
    LaunchState,
    check_launchable,
    check_same_launch,
    launch_outcome_unknown,
    offered_type,
)
from gateway.domain.model import Image, InstanceType, Quote, Verdict
from gateway.service_layer.dependencies import Dependencies
from gateway.service_layer.operations import HOLD, REPLICA

log = logging.getLogger("gateway.launch")
T = TypeVar("T")

# A PENDING launch older than this is taken to have lost its caller; whoever finds it resolves it.
STALE_LAUNCH_AFTER = HOLD
_WAIT_STEP_SECONDS = 0.02
# Billing's refusals that mean "charged" is still possible, so the launch must not be forgotten.
_NOT_A_REFUSAL = {"IDEMPOTENCY_PARAMETER_MISMATCH"}
# RunInstances calls by outcome (cloudimg_launches_total): a verdict the caller can act on is "refused".
_REFUSED_CODES = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED",
                  "ALREADY_EXISTS", "ABORTED"}
LAUNCHES = Counter("cloudimg_launches_total", "RunInstances calls, by outcome.", ("outcome",))
_LAUNCHES = {outcome: LAUNCHES.labels(outcome) for outcome in (
    "launched", "dry_run", "refused", "outcome_unknown", "unavailable", "failed", "cancelled")}


def _failure_outcome(exc: DomainError) -> str:
    if exc.reason == "LAUNCH_OUTCOME_UNKNOWN":
        return "outcome_unknown"
    if exc.code in _REFUSED_CODES:
        return "refused"
    return "unavailable" if exc.code == "UNAVAILABLE" else "failed"


async def _image_and_type(request: LaunchRequest, deps: Dependencies) -> tuple[Image, InstanceType]:
    request.validate()
    await deps.reference.region(request.region)
    instance_type = offered_type(await deps.reference.instance_types(), request.instance_type, request.region)
    return await deps.catalog.image(request.image_id, request.region), instance_type


def _checked(request: LaunchRequest, image: Image, verdict: Verdict, instance_type: InstanceType) -> Image:
    check_launchable(request, image, verdict, instance_type)
    return image.seen_with(verdict)


async def quote_run_instances(request: LaunchRequest, deps: Dependencies) -> Quote:
    """Validates and prices a launch exactly as RunInstances would; the verdict and the price are
    independent, so they are asked for at once."""
    image, instance_type = await _image_and_type(request, deps)
    seen, quote = await checked_and_priced(deps.sharing.verdict(image), deps.billing.quote(request, image),
                                           lambda verdict: _checked(request, image, verdict, instance_type))
    return replace(quote, image_allowed=seen.image_allowed)


async def checked_and_priced(verdict: Awaitable[Verdict], quote: Awaitable[Quote],
                             check: Callable[[Verdict], T]) -> tuple[T, Quote]:
    """A verdict and a price asked for at once. A refusal (the verdict's failure, then the checks it feeds)
    wins over a failure to price: a missing image is NOT_FOUND whatever billing makes of it."""
    got_verdict, got_quote = await asyncio.gather(verdict, quote, return_exceptions=True)
    if isinstance(got_verdict, BaseException):
        raise got_verdict
    seen = check(got_verdict)
    if isinstance(got_quote, BaseException):
        raise got_quote
    return seen, got_quote


async def run_instances(caller: Caller, request: LaunchRequest, dry_run: bool, deps: Dependencies
                        ) -> tuple[list[str], Quote]:
    try:
        launched = await _run_instances(caller, request, dry_run, deps)
    except DomainError as exc:
        _LAUNCHES[_failure_outcome(exc)].inc()
        raise
    except asyncio.CancelledError:
        _LAUNCHES["cancelled"].inc()
        raise
    _LAUNCHES["dry_run" if dry_run else "launched"].inc()
    return launched


async def _run_instances(caller: Caller, request: LaunchRequest, dry_run: bool, deps: Dependencies
                         ) -> tuple[list[str], Quote]:
    if dry_run:
        return [], await quote_run_instances(request, deps)
    request.validate()
    if request.client_token:
        with deps.new_uow(read_only=True) as uow:
            earlier = uow.launches.by_token(caller.account_id, request.client_token)
        if earlier is not None:
            result = await _result_of(earlier, request, deps)
            if result is not None:
                return result
            # The earlier launch was never charged and is forgotten: this call launches afresh.
    image, instance_type = await _image_and_type(request, deps)
    seen = _checked(request, image, await deps.sharing.verdict(image), instance_type)
    launch_id = ids.new_id("lch")
    launch = Launch(
        launch_id=launch_id, account_id=caller.account_id, client_token=request.client_token or launch_id,
        fingerprint=request.fingerprint(), state=LaunchState.PENDING, request=request,
        image_os_type=image.os_type, image_architecture=image.architecture,
        marketplace_product_id=image.marketplace_product_id, image_allowed=seen.image_allowed,
        instance_ids=ids.sibling_ids("ins", request.instance_count), create_time=deps.clock.now(),
    )
    with deps.new_uow() as uow:
        claimed = uow.launches.claim(launch, REPLICA, launch.create_time + STALE_LAUNCH_AFTER)
        uow.commit()
    if not claimed:  # a concurrent call with the same client token got there first
        with deps.new_uow(read_only=True) as uow:
            earlier = uow.launches.by_token(caller.account_id, request.client_token)
        result = None if earlier is None else await _result_of(earlier, request, deps)
        if result is None:
            raise _concurrent_launch_failed()
        return result
    try:
        return await finish_launch(launch, deps)
    except asyncio.CancelledError:  # the caller left (deadline, cancel): a retry or the launch's job resolves it
        _mark_in_doubt(launch, deps)
        raise


async def finish_launch(launch: Launch, deps: Dependencies) -> tuple[list[str], Quote]:
    """Charges a claimed launch and runs its instances, or forgets it when billing refuses. When
    billing's answer is lost, the outcome is resolved at once if billing can be asked; if not, the
    launch is left IN_DOUBT and the caller hears LAUNCH_OUTCOME_UNKNOWN."""
    try:
        charge_id, priced = await deps.billing.charge(launch)
    except Unreached:  # the charge never left the gateway: certainly not charged, nothing in flight
        _forget(launch, deps)
        raise
    except RemoteError as exc:
        if exc.reason not in _NOT_A_REFUSAL:
            # Billing refused before it wrote anything (or the launch id is void): nothing is charged.
            _forget(launch, deps)
            raise
        log.error("charge refused unexpectedly", extra=fields(launch_id=launch.launch_id, reason=exc.reason))
        return await _resolve_or_doubt(launch, deps, exc)
    except DomainError as exc:  # unavailable, too slow, or failed: the charge may or may not exist
        return await _resolve_or_doubt(launch, deps, exc)
    return _complete_or_doubt(launch, charge_id, priced, deps)


async def _resolve_or_doubt(launch: Launch, deps: Dependencies, failure: DomainError) -> tuple[list[str], Quote]:
    try:
        settled = await settle_launch(launch, deps)
    except DomainError:
        _mark_in_doubt(launch, deps)
        raise launch_outcome_unknown(launch) from None
    if settled is None:  # never charged, now void and forgotten: the first failure is the truth
        raise failure
    return settled


async def settle_launch(launch: Launch, deps: Dependencies) -> tuple[list[str], Quote] | None:
    """Decides an unsettled launch by asking billing: finished if it was charged (its instances and
    quote), forgotten if it was not (None; billing voids its id, so no late charge can land)."""
    charged = await deps.billing.resolve(launch)
    if charged is None:
        _forget(launch, deps)
        log.info("launch voided", extra=fields(launch_id=launch.launch_id))
        return None
    return _complete_or_doubt(launch, *charged, deps)


def _complete_or_doubt(launch: Launch, charge_id: str, priced: Quote, deps: Dependencies
                       ) -> tuple[list[str], Quote]:
    quote = replace(priced, image_allowed=launch.image_allowed)
    try:
        with deps.new_uow() as uow:
            uow.launches.complete(launch, quote, charge_id, deps.clock.now())
            uow.commit()
    except Exception:  # charged, but the gateway's own database failed: the launch's job finishes it
        log.exception("launch charged but not completed", extra=fields(launch_id=launch.launch_id))
        raise launch_outcome_unknown(launch) from None
    return launch.instance_ids, quote


def _forget(launch: Launch, deps: Dependencies) -> None:
    with deps.new_uow() as uow:
        uow.launches.forget(launch.launch_id, deps.clock.now())
        uow.commit()


def _mark_in_doubt(launch: Launch, deps: Dependencies) -> None:
    try:
        with deps.new_uow() as uow:
            uow.launches.mark_in_doubt(launch.launch_id, REPLICA, deps.clock.now())
            uow.commit()
    except Exception:  # it stays PENDING, and its job is due once the call's hold ends
        log.exception("could not mark a launch in doubt", extra=fields(launch_id=launch.launch_id))


async def _result_of(launch: Launch, request: LaunchRequest, deps: Dependencies
                     ) -> tuple[list[str], Quote] | None:
    """The result of an earlier launch with the request's client token, once it is settled; None when
    it was never charged and is forgotten (then the caller's request launches afresh)."""
    check_same_launch(launch, request)
    while launch.state is not LaunchState.DONE:
        if launch.state is LaunchState.IN_DOUBT or _stale(launch, deps):
            try:
                return await settle_launch(launch, deps)
            except DomainError:
                raise launch_outcome_unknown(launch) from None
        remaining = context.remaining_seconds()
        if remaining is not None and remaining < 2 * _WAIT_STEP_SECONDS:
            raise Aborted("LAUNCH_IN_PROGRESS", "a launch with this client_token is still in progress; retry")
        # Another call, maybe on another replica, is finishing it: look again shortly.
        await asyncio.sleep(_WAIT_STEP_SECONDS)
        with deps.new_uow(read_only=True) as uow:
            found = uow.launches.get(launch.launch_id)
        if found is None:
            return None
        launch = found
    assert launch.quote is not None  # a DONE launch has its quote
    return launch.instance_ids, launch.quote


def _stale(launch: Launch, deps: Dependencies) -> bool:
    return deps.clock.now() - _aware(launch.create_time) > STALE_LAUNCH_AFTER


def _concurrent_launch_failed() -> Aborted:
    return Aborted("CONCURRENT_LAUNCH_FAILED", "a concurrent launch with this client_token failed; retry")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def settle_launch_job(job: Job, run: JobRun, deps: Dependencies) -> None:
    """The job of a launch whose call did not settle it (it died, or billing could not be asked):
    settles it. Raises while billing cannot be asked; the worker tries again later."""
    with deps.new_uow(read_only=True) as uow:
        launch = uow.launches.get(job.subject)
    if launch is None or launch.state is LaunchState.DONE:
        return  # settled meanwhile, by its call or a retry
    context.current_caller.set(Caller(launch.account_id))
    context.deadline.set(None)
    await settle_launch(launch, deps)


def adopt_unsettled_launches(deps: Dependencies) -> int:
    """Gives a job to each unsettled launch that has none: those claimed by gateways from before the
    jobs. Idempotent; run at start-up, and now and then (an older replica may outlive this one's start)."""
    with deps.new_uow() as uow:
        adopted = uow.launches.add_missing_jobs(STALE_LAUNCH_AFTER, deps.clock.now())
        uow.commit()
    if adopted:
        log.info("unsettled launches adopted", extra=fields(launches=adopted))
    return adopted
