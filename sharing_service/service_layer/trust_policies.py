"""The caller's image trust policy: read it, change some of its fields."""

from __future__ import annotations

from chassis.clock import Clock, SystemClock
from sharing_service.domain import trust
from sharing_service.domain.trust import PolicyDraft, TrustPolicy
from sharing_service.service_layer.unit_of_work import UnitOfWorkFactory

_SYSTEM_CLOCK = SystemClock()


def get_trust_policy(caller_account_id: str, *, new_uow: UnitOfWorkFactory) -> TrustPolicy:
    with new_uow(read_only=True) as uow:
        return uow.trust.get(caller_account_id)


def update_trust_policy(draft: PolicyDraft, paths: list[str], caller_account_id: str, request_id: str, *,
                        new_uow: UnitOfWorkFactory, clock: Clock = _SYSTEM_CLOCK) -> TrustPolicy:
    """Changes the fields named in ``paths`` (all of them when it is empty); the others keep their value."""
    update = trust.checked_update(draft, trust.update_fields(paths))
    with new_uow() as uow:
        claim = uow.policy_requests.claim(caller_account_id, request_id, "UpdateTrustPolicy",
                                          **update.fingerprint_fields())
        if claim.repeated:
            return claim.response
        # Locked, so that two updates of different fields both land (and the allow-list's limit holds).
        now = clock.now()
        stored = uow.trust.lock(caller_account_id, now)
        policy = trust.updated(stored, update, now)
        uow.trust.save(caller_account_id, stored, policy)
        claim.answer(policy)
        uow.commit()
    return policy
